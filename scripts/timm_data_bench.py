"""timm/PIL baseline for timm's augmentation policies: image/s of timm's train transform
(RandomResizedCropAndInterpolation(224, bilinear) + flip + the `--aa` policy, then PILToTensor:
uint8 CHW, normalisation left to the device as resnet-train does), reading every .jpg/.jpeg/.png
under DIR as ../shared/bench/torch_data_bench.py does (one process; --passes timed passes).

  python scripts/timm_data_bench.py ../shared/data/imagenet-samples --aa rand-m9-mstd0.5-inc1
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
    ap.add_argument("--aa", default="rand-m9-mstd0.5-inc1")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--passes", type=int, default=2)
    a = ap.parse_args()
    primary, secondary, _ = create_transform(
        a.size, is_training=True, auto_augment=a.aa, interpolation="bilinear", color_jitter=None,
        re_prob=0.0, separate=True)
    tf = T.Compose([*primary.transforms, *secondary.transforms, T.PILToTensor()])
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
    print(json.dumps({"impl": "timm+PIL", "policy": a.aa, "size": a.size, "workers": 1, "images": n,
                      "img_per_s": round(n / dt, 1)}))


if __name__ == "__main__":
    main()
