"""Golden outputs of the augmentation ops: torchvision 0.26's `_apply_op` (nearest, fill 0) and
timm 1.0.31's op functions (bilinear / bicubic, fill = ImageNet mean) on PIL 13 images.

Inputs: square center crops (no resampling) of three real ImageNet files from
../shared/data/imagenet-samples (only their names and boxes are stored; the test decodes the same
crop itself), and a synthetic non-square pattern both sides generate:
  px[c, y, x] = (7 x + 13 y + 29 c + (x y) mod 17) mod 256, 31 wide, 29 high.
Outputs are stored as uint8 CHW under "<family>|<op>|<argument>|<input>" (families: tv, tvf
torchvision functional, tvg grayscale, tvb Gaussian blur with sigma as argument, timm); inputs as
"input|<name>|<file>|<left>|<top>|<size>" (an empty uint8 tensor).

augmix.safetensors: timm's AugMixAugment._apply_basic itself (its float32 mixing, clipping and
final Image.blend) on the same inputs, with the chains fixed: np.random.randint/choice replaced
by the case's chain of op functions with fixed arguments (the metadata "chains" lists them per
case as [name, argument, filter]); weights and m from np.random.dirichlet/beta, stored as
"augmix|<case>|weights" and "augmix|<case>|m"; outputs "augmix|<case>|<input>".

  /tmp/refvenv/bin/python tests/golden/make_augment_golden.py
"""
import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import auto_augment as ta
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from torchvision.transforms.autoaugment import _apply_op

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "../../../shared/data/imagenet-samples")
REAL = [("tench", "n01440764_tench.JPEG", 40), ("goldfish", "n01443537_goldfish.JPEG", 32),
        ("shark", "n01484850_great_white_shark.JPEG", 36)]

TV = [("ShearX", 0.3), ("ShearX", -0.17), ("ShearY", 0.25), ("ShearY", -0.3),
      ("TranslateX", 10.0), ("TranslateX", -7.0), ("TranslateY", 5.0), ("TranslateY", -12.0),
      ("Rotate", 9.0), ("Rotate", -17.5), ("Rotate", 90.0), ("Rotate", -90.0), ("Rotate", 180.0),
      ("Rotate", 135.0),
      ("Brightness", 0.5), ("Brightness", -0.5), ("Brightness", 0.9), ("Color", -0.6), ("Color", 0.8),
      ("Contrast", -0.4), ("Contrast", 0.9), ("Sharpness", -0.9), ("Sharpness", 0.7),
      ("Posterize", 4.0), ("Posterize", 6.0), ("Solarize", 128.0), ("Solarize", 200.5),
      ("AutoContrast", 0.0), ("Equalize", 0.0), ("Invert", 0.0)]

HUE = [0.1, -0.1, 0.25, -0.37, 0.5, -0.5, 0.003]

# timm's grayscale_prob / gaussian_blur_prob ops: torchvision's rgb_to_grayscale(img, 3) and
# gaussian_blur(img, 23, sigma) at GaussianBlur's sigma range ends and inside it.
BLUR_SIGMAS = [0.1, 0.5, 1.3, 2.0]

FILL = (124, 116, 104)
BL, BC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC
TIMM = [("ShearX", 0.2, BL), ("ShearX", -0.3, BC), ("ShearY", 0.15, BC), ("ShearY", -0.1, BL),
        ("TranslateXRel", 0.3, BL), ("TranslateYRel", -0.45, BC), ("TranslateXRel", -0.123, BC),
        ("Rotate", 20.0, BL), ("Rotate", -13.5, BC), ("SolarizeAdd", 110.0, None),
        ("SolarizeAdd", 33.0, None), ("Posterize", 2.0, None), ("Posterize", 8.0, None),
        ("Color", 0.1, None), ("Contrast", 1.9, None), ("Brightness", 1.54, None),
        ("Sharpness", 0.3, None), ("Solarize", 256.0, None)]


def synthetic():
    h, w = 29, 31
    y, x = np.mgrid[0:h, 0:w]
    planes = [(7 * x + 13 * y + 29 * c + (x * y) % 17) % 256 for c in range(3)]
    return Image.fromarray(np.stack(planes, -1).astype(np.uint8), "RGB")


def chw(img):
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def timm_op(img, name, arg, resample):
    kw = dict(fillcolor=FILL, resample=resample) if resample is not None else {}
    fn = {"ShearX": ta.shear_x, "ShearY": ta.shear_y, "TranslateXRel": ta.translate_x_rel,
          "TranslateYRel": ta.translate_y_rel, "Rotate": ta.rotate, "SolarizeAdd": ta.solarize_add,
          "Posterize": ta.posterize, "Color": ta.color, "Contrast": ta.contrast,
          "Brightness": ta.brightness, "Sharpness": ta.sharpness, "Solarize": ta.solarize}[name]
    if name in ("Posterize", "SolarizeAdd", "Solarize"):
        arg = int(arg)
    return fn(img, arg, **kw)


# AugMix chains: [op, argument, filter]; the arguments are what timm's level functions give its 13
# ops (the *Increasing ones call color/contrast/brightness/sharpness/posterize/solarize).
AUGMIX = {
    "w3a": [[["Rotate", 12.5, "bilinear"]], [["ShearX", -0.2, "bicubic"], ["Equalize", None, None]],
            [["Color", 1.63, None], ["Posterize", 3, None], ["TranslateYRel", 0.2, "bilinear"]]],
    "w3b": [[["AutoContrast", None, None]], [["Solarize", 200, None]],
            [["Contrast", 0.4, None], ["Brightness", 1.7, None]]],
    "w4": [[["Sharpness", 1.9, None]], [["ShearY", 0.1, "bilinear"], ["TranslateXRel", -0.3, "bicubic"]],
           [["Rotate", -28.0, "bicubic"], ["Solarize", 128, None], ["Equalize", None, None]],
           [["Brightness", 0.2, None]]],
    "w1": [[["Color", 0.1, None], ["Posterize", 1, None]]],
}


def augmix_op(name, arg, filt):
    if name == "AutoContrast":
        return ta.auto_contrast
    if name == "Equalize":
        return ta.equalize
    resample = {None: None, "bilinear": BL, "bicubic": BC}[filt]
    return lambda img: timm_op(img, name, arg, resample)


def augmix(img, chains, weights, m):
    """timm's own _apply_basic with the depth and op draws fixed to `chains`."""
    aug = ta.AugMixAugment(ops=[], width=len(chains), depth=-1)
    pending = iter(chains)
    current = []
    saved = np.random.randint, np.random.choice

    def randint(lo, hi):
        current[:] = [augmix_op(*op) for op in next(pending)]
        return len(current)

    np.random.randint, np.random.choice = randint, lambda ops, depth, replace=True: list(current)
    try:
        return aug._apply_basic(img, weights, m)
    finally:
        np.random.randint, np.random.choice = saved


def augmix_golden(inputs):
    out = {}
    for seed, (case, chains) in enumerate(AUGMIX.items()):
        rng = np.random.RandomState(seed)
        weights = np.float32(rng.dirichlet([1.0] * len(chains)))
        m = np.float32(rng.beta(1.0, 1.0))
        out[f"augmix|{case}|weights"] = torch.from_numpy(weights.copy())
        out[f"augmix|{case}|m"] = torch.tensor(float(m), dtype=torch.float32)
        for iname, img in inputs.items():
            out[f"augmix|{case}|{iname}"] = chw(augmix(img, chains, weights, m))
    save_file(out, os.path.join(HERE, "augmix.safetensors"), metadata={"chains": json.dumps(AUGMIX)})
    print(f"wrote augmix.safetensors: {len(out)} tensors")


def main():
    inputs = {"synthetic": synthetic()}
    out = {}
    for name, file, size in REAL:
        im = Image.open(os.path.join(SAMPLES, file)).convert("RGB")
        left, top = (im.width - size) // 2, (im.height - size) // 2
        inputs[name] = im.crop((left, top, left + size, top + size))
        out[f"input|{name}|{file}|{left}|{top}|{size}"] = torch.zeros(0, dtype=torch.uint8)
    for iname, img in inputs.items():
        for op, m in TV:
            res = _apply_op(img, op, m, InterpolationMode.NEAREST, None)
            out[f"tv|{op}|{m!r}|{iname}"] = chw(res)
        for h in HUE:
            out[f"tvf|Hue|{h!r}|{iname}"] = chw(TF.adjust_hue(img, h))
        out[f"tvg|Grayscale|0|{iname}"] = chw(TF.rgb_to_grayscale(img, num_output_channels=3))
        for sigma in BLUR_SIGMAS:
            out[f"tvb|GaussianBlur|{sigma!r}|{iname}"] = chw(TF.gaussian_blur(img, [23, 23], [sigma, sigma]))
        for op, arg, resample in TIMM:
            r = {None: "none", BL: "bilinear", BC: "bicubic"}[resample]
            out[f"timm|{op}|{arg!r}|{iname}|{r}"] = chw(timm_op(img, op, arg, resample))
    save_file(out, os.path.join(HERE, "augment.safetensors"))
    print(f"wrote augment.safetensors: {len(out)} tensors")
    augmix_golden(inputs)


if __name__ == "__main__":
    main()
