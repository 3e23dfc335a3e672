"""timm/PIL baseline for timm's transforms: image/s of timm's train transform
(RandomResizedCropAndInterpolation(224, --interpolation) + flip + the `--aa` policy, then
PILToTensor: uint8 CHW, normalisation left to the device as resnet-train does) or, with --mode eval,
its eval transform (Resize(floor(224 / --crop-pct), --interpolation) + CenterCrop(224)), reading
every .jpg/.jpeg/.png under DIR as ../shared/bench/torch_data_bench.py does (one process; --passes
timed passes).

  python scripts/bench/timm_data_bench.py ../shared/data/imagenet-samples --aa rand-m9-mstd0.5-inc1
  python scripts/bench/timm_data_bench.py ../shared/data/imagenet-samples --aa none --interpolation random
  python scripts/bench/timm_data_bench.py ../shared/data/imagenet-samples --aa none --color-jitter 0.4 \
      --color-jitter-prob 0.8 --grayscale-prob 0.2 --gaussian-blur-prob 0.5
  python scripts/bench/timm_data_bench.py ../shared/data/imagenet-samples --mode eval --interpolation bicubic --crop-pct 0.95
"""
import argparse
import json
import os
import time

from PIL import Image, ImageOps
from timm.data import create_transform

# timm 1.0.31's PosterizeIncreasing reaches 0 bits at magnitude >= 10 (m9 + mstd 0.5 noise gets
# there), which Pillow 13 refuses; Pillow <= 12 returned a black image, as resnet-train does.
_posterize = ImageOps.posterize
ImageOps.posterize = lambda img, bits: img.point(lambda i: 0) if bits == 0 else _posterize(img, bits)
from torchvision import transforms as T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="a timm policy, or none")
    ap.add_argument("--mode", choices=["train", "eval"], default="train")
    ap.add_argument("--interpolation", choices=["bilinear", "bicubic", "random"], default="bilinear")
    ap.add_argument("--crop-pct", type=float, default=0.875)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--color-jitter", type=float, default=None)
    ap.add_argument("--color-jitter-prob", type=float, default=None)
    ap.add_argument("--grayscale-prob", type=float, default=0.0)
    ap.add_argument("--gaussian-blur-prob", type=float, default=0.0)
    a = ap.parse_args()
    if a.mode == "train":
        aa = None if a.aa == "none" else a.aa
        primary, secondary, _ = create_transform(
            a.size, is_training=True, auto_augment=aa, interpolation=a.interpolation, color_jitter=a.color_jitter,
            color_jitter_prob=a.color_jitter_prob, grayscale_prob=a.grayscale_prob,
            gaussian_blur_prob=a.gaussian_blur_prob, re_prob=0.0, separate=True)
        tf = T.Compose([*primary.transforms, *secondary.transforms, T.PILToTensor()])
    else:
        tf = create_transform(a.size, is_training=False, interpolation=a.interpolation, crop_pct=a.crop_pct,
                              use_prefetcher=True)
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(a.dir) for f in fs
                   if f.lower().endswith((".jpg", ".jpeg", ".png")))
    for f in files:  # warm the page cache, untimed
        open(f, "rb").read()
    t0 = time.perf_counter()
    n = 0
    for _ in range(a.passes):
        for f in files:
            with open(f, "rb") as fh:
                img = Image.open(fh).convert("RGB")
            tf(img)
            n += 1
    dt = time.perf_counter() - t0
    print(json.dumps({"impl": "timm+PIL", "mode": a.mode, "policy": a.aa if a.mode == "train" else "none",
                      "interpolation": a.interpolation, "size": a.size, "workers": 1, "images": n,
                      "img_per_s": round(n / dt, 1)}))


if __name__ == "__main__":
    main()
