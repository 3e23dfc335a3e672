"""Golden values for the resize filters (bilinear and bicubic), from Pillow and timm. Rerun from
the repo root with torch==2.11.0, torchvision==0.26.0, timm==1.0.31 and Pillow 13:

  python tests/golden/make_filters_golden.py      # writes tests/golden/resize_filters.safetensors

- `synthetic.*`: a 53 x 67 pseudo-random pattern with sharp edges (stored: no ImageNet pixels),
  resized by Pillow exactly as torchvision's and timm's PIL paths call it: a crop resized on its own
  (`resized_crop`, RandomResizedCrop), and a whole image resized then center-cropped (Resize +
  CenterCrop). Our resampler must match these bit for bit.
- `eval.bicubic.<file>.*`, `train.bicubic.<file>.*`: real ImageNet files from ../shared through
  timm's eval transform (`create_transform(224, crop_pct=0.95, interpolation='bicubic')`, i.e.
  Resize(floor(224 / 0.95) = 235, BICUBIC) + CenterCrop(224), as ResNet Strikes Back evaluates) and
  torchvision's `resized_crop(..., BICUBIC)` at fixed crops; only 16 x 16 patches and channel means
  are kept, as in preprocess.safetensors.
"""
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "..", "shared", "data", "imagenet-samples")
FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
# (left, top, right, bottom) crops resized to (width, height): down, up, mixed, identity, 1 px.
CROP_CASES = [
    ((0, 0, 67, 53), (17, 13)),
    ((5, 3, 60, 50), (31, 29)),
    ((10, 7, 30, 22), (57, 41)),
    ((2, 9, 63, 20), (23, 37)),
    ((0, 0, 67, 53), (67, 53)),
    ((30, 20, 31, 21), (5, 4)),
]
# Resize the whole image to (width, height), then center-crop (width, height) of it.
RESIZE_CROP_CASES = [((40, 31), (24, 24)), ((90, 71), (64, 64)), ((29, 23), (23, 23))]
PATCH = 16
PATCH_SPOTS = [(0, 0), (0, 224 - PATCH), (104, 104), (224 - PATCH, 0), (224 - PATCH, 224 - PATCH), (50, 150)]
REAL_EVAL = ["n01440764_tench.JPEG", "n02096051_Airedale.JPEG", "n02091032_Italian_greyhound.JPEG",
             "n01871265_tusker.JPEG", "n04254680_soccer_ball.JPEG"]
REAL_TRAIN = [  # (file, (top, left, height, width)): full-resolution and DCT-scaled decodes
    ("n01440764_tench.JPEG", (50, 100, 200, 300)),
    ("n02096051_Airedale.JPEG", (10, 37, 301, 250)),
    ("n02091032_Italian_greyhound.JPEG", (100, 200, 1200, 1500)),
    ("n01871265_tusker.JPEG", (3, 5, 40, 50)),
]


def chw(img):
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def patches(x):
    return torch.stack([x[:, r:r + PATCH, c:c + PATCH] for r, c in PATCH_SPOTS]).contiguous()


def synthetic():
    rng = np.random.default_rng(20261202)
    base = rng.integers(0, 256, size=(53, 67, 3), dtype=np.uint8)
    base[10:30, 20:45] = [255, 0, 255]  # flat blocks with hard edges: the cubic's overshoot clips
    base[35:50, 5:25] = [0, 255, 0]
    return base


def main():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F
    import timm.data

    out = {}
    pixels = synthetic()
    out["synthetic.input"] = torch.from_numpy(pixels.copy())
    img = Image.fromarray(pixels, "RGB")
    for name, f in FILTERS.items():
        for box, (w, h) in CROP_CASES:
            out[f"synthetic.{name}.crop.{'.'.join(map(str, box))}.{w}.{h}"] = chw(img.crop(box).resize((w, h), f))
        for (w, h), (cw, ch) in RESIZE_CROP_CASES:
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            r = img.resize((w, h), f).crop((left, top, left + cw, top + ch))
            out[f"synthetic.{name}.resize.{w}.{h}.{cw}.{ch}"] = chw(r)
    if os.path.isdir(SHARED):
        tf = timm.data.create_transform(224, is_training=False, interpolation="bicubic", crop_pct=0.95,
                                        use_prefetcher=True)
        print(tf)
        for name in REAL_EVAL:
            with open(os.path.join(SHARED, name), "rb") as fh:
                im = Image.open(fh).convert("RGB")
            x = torch.from_numpy(np.asarray(tf(im))).contiguous()  # MaybePILToTensor: uint8 CHW
            assert x.shape == (3, 224, 224), x.shape
            out[f"eval.bicubic.{name}.patches"] = patches(x)
            out[f"eval.bicubic.{name}.mean"] = x.double().mean(dim=(1, 2))
        for name, (top, left, h, w) in REAL_TRAIN:
            with open(os.path.join(SHARED, name), "rb") as fh:
                im = Image.open(fh).convert("RGB")
            x = F.pil_to_tensor(F.resized_crop(im, top, left, h, w, [224, 224], InterpolationMode.BICUBIC))
            key = f"train.bicubic.{name}.{top}.{left}.{h}.{w}"
            out[f"{key}.patches"] = patches(x)
            out[f"{key}.mean"] = x.double().mean(dim=(1, 2))
        out["patch_spots"] = torch.tensor(PATCH_SPOTS, dtype=torch.int64)
    else:
        raise SystemExit(f"{SHARED} is missing: the real-image cases need ../shared")
    save_file(out, os.path.join(HERE, "resize_filters.safetensors"))
    print(f"wrote resize_filters.safetensors ({len(out)} tensors)")


if __name__ == "__main__":
    main()
