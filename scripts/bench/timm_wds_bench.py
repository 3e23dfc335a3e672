"""timm's WebDataset pipeline as a baseline for `resnet-train bench-data --data SHARDS`: image/s of
timm's `wds/` reader (timm.data.create_dataset('wds/...'): shard shuffle, its shuffle buffer, the
split over DataLoader workers) feeding the standard train transform (RandomResizedCrop(224) + flip
+ PILToTensor: uint8 CHW, normalisation left to the device as resnet-train does) through a
torch DataLoader of --workers processes, batch 64. The first batch (workers starting, the first
shards opened) is not timed; --passes epochs over the split are.

Prints one JSON line: {"impl": "timm-wds", "workers": W, "img_per_s": X, "first_batch_s": Y, ...}.

  python scripts/bench/timm_wds_bench.py /path/to/wds --workers 2 --passes 2
"""
import argparse
import json
import time

import torch
from timm.data import create_dataset
from torchvision import transforms as T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root", help="a folder of shards with timm's _info.json")
    ap.add_argument("--split", default="train")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--shuffle-size", type=int, default=8192)
    a = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    ds = create_dataset(
        "wds/bench", root=a.root, split=a.split, is_training=True, batch_size=a.batch_size,
        seed=0, sample_shuffle_size=a.shuffle_size,
    )
    ds.transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()])
    loader = torch.utils.data.DataLoader(
        ds, batch_size=a.batch_size, num_workers=a.workers, persistent_workers=a.workers > 0
    )
    it = iter(loader)
    next(it)
    first = time.perf_counter() - started
    t0 = time.perf_counter()
    images = 0
    for p in range(a.passes):
        ds.set_epoch(p + 1) if hasattr(ds, "set_epoch") else None
        for x, _ in loader:
            images += x.shape[0]
    secs = time.perf_counter() - t0
    print(json.dumps({
        "impl": "timm-wds", "workers": a.workers, "images": images, "seconds": round(secs, 3),
        "img_per_s": round(images / secs, 1) if images else 0,
        "img_per_s_per_worker": round(images / secs / max(a.workers, 1), 1) if images else 0,
        "first_batch_s": round(first, 3),
    }))


if __name__ == "__main__":
    main()
