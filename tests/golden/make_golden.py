"""Generates the committed golden files from ../shared/reference/polycom.py (needs torch==2.11.0,
torchvision==0.26.0, safetensors). Rerun from the repo root:

  python tests/golden/make_golden.py generate      # writes tests/golden/*.safetensors, *.json
  python tests/golden/make_golden.py train-f64     # (only) the float64 train-mode logits
  python tests/golden/make_golden.py activations   # (only) activations_o1_8.safetensors
  python tests/golden/make_golden.py blurpool      # (only) blurpool_logits.safetensors
  python tests/golden/make_golden.py bn-settings   # (only) bn_settings.safetensors
  python tests/golden/make_golden.py dropblock     # (only) dropblock.safetensors (needs timm)
  python tests/golden/make_golden.py check W.safetensors   # strict-loads a resnet-train file into
                                                           # PolyResNet and prints its logits check

Model weights are not stored: both sides derive them from each tensor's name with the exact
integer formula in `det_values` (mirrored in tests/common/mod.rs), so the files stay small.
"""
import json
import math
import os
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "reference"))
import polycom  # noqa: E402

INPUT_SHAPE = (2, 3, 64, 64)
CASES = [  # (arch, act, act_init)
    ("resnet50", "relu", "paper"),
    ("resnet50", "polyrelu", "relu-like"),
    ("resnet50", "polynorm", "paper"),
    ("resnet18", "polynorm", "paper"),
]


def fnv1a(name):
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def det_values(name, shape):
    """Deterministic values in [-0.5, 0.5), exact in f64: ((j * 2654435761 + fnv1a(name)) mod 2^32) / 2^32 - 0.5."""
    n = math.prod(shape)
    j = torch.arange(n, dtype=torch.int64)
    u = torch.remainder(j * 2654435761 + fnv1a(name), 2**32).to(torch.float64) / 2**32 - 0.5
    return u.reshape(shape)


def det_tensor(name, shape, order, act_init):
    """The value every test model uses for the variable `name` (f32)."""
    u = det_values(name, shape)
    leaf = name.rsplit(".", 1)[-1]
    is_act = any(s.startswith("act") and s[3:].isdigit() for s in name.split("."))
    if is_act:
        if leaf == "bias":
            return torch.zeros(shape, dtype=torch.float32)
        w = torch.zeros(order, dtype=torch.float64)
        if act_init == "relu-like":
            w[0] = 1.0
        else:
            w[:] = 1.0 / order
        return w.float()
    if len(shape) > 1:
        fan_in = math.prod(shape[1:])
        return (u * math.sqrt(24.0 / fan_in)).float()
    if leaf == "running_var":
        return (1.0 + 0.5 * u).float()
    if leaf == "weight":  # BN gamma
        return (1.0 + 0.2 * u).float()
    return (0.1 * u).float()  # BN beta, running_mean, fc.bias


def det_input():
    return (4.0 * det_values("input", INPUT_SHAPE)).float()


def fill(model, order, act_init):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            t.copy_(det_tensor(name, tuple(t.shape), order, act_init))


def build(arch, act, act_init, order=3):
    m = polycom.PolyResNet(arch, act, order)
    fill(m, order, act_init)
    return m


def logits(m, train):
    m.train(train)
    with torch.no_grad():
        return m(det_input())


def generate():
    polycom.golden(os.path.join(HERE, "activations.safetensors"))
    out, keys = {}, {}
    for arch, act, act_init in CASES:
        m = build(arch, act, act_init)
        tag = f"{arch}.{act}"
        out[f"{tag}.eval"] = logits(m, False)
        out[f"{tag}.train"] = logits(m, True)  # after eval: train mode updates the running stats
        keys[tag] = {k: list(v.shape) for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
        if act == "relu":  # the same weights in torchvision's own model give the same logits
            tv = getattr(torchvision.models, arch)()
            tv.load_state_dict(build(arch, act, act_init).state_dict(), strict=True)  # before train-mode stats
            tv.eval()
            with torch.no_grad():
                assert torch.allclose(tv(det_input()), out[f"{tag}.eval"], rtol=0, atol=1e-5)
            keys[f"{arch}.torchvision"] = {k: list(v.shape) for k, v in tv.state_dict().items()
                                           if not k.endswith("num_batches_tracked")}
    out["input"] = det_input()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "model_logits.safetensors"))
    with open(os.path.join(HERE, "state_dict_keys.json"), "w") as f:
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(keys.items())) + "\n}\n")
    print("wrote model_logits.safetensors and state_dict_keys.json")
    preprocess()
    fixtures()
    devkit_meta()


PREPROCESS_IMAGES = [  # typical, grayscale, tiny (upscaled), large, EXIF orientation 6 (ignored), ...
    "n01440764_tench.JPEG", "n02096051_Airedale.JPEG", "n01871265_tusker.JPEG",
    "n02091032_Italian_greyhound.JPEG", "n02951585_can_opener.JPEG", "n03866082_overskirt.JPEG",
    "n02692877_airship.JPEG", "n03843555_oil_filter.JPEG", "n04254680_soccer_ball.JPEG",
]
TRAIN_CROPS = [  # (file, (top, left, height, width), flip): full-resolution and DCT-scaled decodes
    ("n01440764_tench.JPEG", (50, 100, 200, 300), False),
    ("n01440764_tench.JPEG", (0, 0, 375, 500), True),
    ("n02096051_Airedale.JPEG", (10, 37, 301, 250), True),
    ("n02091032_Italian_greyhound.JPEG", (100, 200, 1200, 1500), False),
    ("n01871265_tusker.JPEG", (3, 5, 40, 50), False),
]
PATCH = 16  # ImageNet pixels are not committed: only 16x16 patches at fixed spots and channel means
PATCH_SPOTS = [(0, 0), (0, 224 - PATCH), (104, 104), (224 - PATCH, 0), (224 - PATCH, 224 - PATCH), (50, 150)]


def preprocess():
    """torchvision's ResNet eval transform up to uint8 (Resize(256) + CenterCrop(224) on the PIL
    image torchvision's default loader makes) for real ImageNet files from ../shared, reduced to
    a few patches and the channel means."""
    from PIL import Image
    from torchvision import transforms as T
    folder = os.path.join(HERE, "..", "..", "..", "shared", "data", "imagenet-samples")
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    out = {}
    for name in PREPROCESS_IMAGES:
        with open(os.path.join(folder, name), "rb") as f:
            img = Image.open(f).convert("RGB")
        x = tf(img)
        out[f"eval224.{name}.patches"] = torch.stack([x[:, r:r + PATCH, c:c + PATCH] for r, c in PATCH_SPOTS]).contiguous()
        out[f"eval224.{name}.mean"] = x.double().mean(dim=(1, 2))
    # Train: torchvision's resized_crop (PIL crop, then resize to 224) and hflip, at fixed crops.
    for name, (top, left, h, w), flip in TRAIN_CROPS:
        with open(os.path.join(folder, name), "rb") as f:
            img = Image.open(f).convert("RGB")
        x = T.functional.pil_to_tensor(T.functional.resized_crop(img, top, left, h, w, [224, 224]))
        if flip:
            x = x.flip(-1)
        key = f"train224.{name}.{top}.{left}.{h}.{w}.{int(flip)}"
        out[f"{key}.patches"] = torch.stack([x[:, r:r + PATCH, c:c + PATCH] for r, c in PATCH_SPOTS]).contiguous()
        out[f"{key}.mean"] = x.double().mean(dim=(1, 2))
    out["patch_spots"] = torch.tensor(PATCH_SPOTS, dtype=torch.int64)
    save_file(out, os.path.join(HERE, "preprocess.safetensors"))
    print("wrote preprocess.safetensors")


def fixtures():
    """Small synthetic images in the formats real ImageNet holds (no ImageNet pixels): CMYK JPEG,
    grayscale JPEG, a PNG named .JPEG, an RGB JPEG with an EXIF orientation tag."""
    import numpy as np
    from PIL import Image
    d = os.path.join(HERE, "..", "fixtures")
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    base = (torch.rand(3, 48, 64, generator=g) * 255).to(torch.uint8)
    base[:, 10:30, 20:50] = torch.tensor([200, 40, 90], dtype=torch.uint8)[:, None, None]
    rgb = Image.fromarray(base.permute(1, 2, 0).numpy(), "RGB")
    rgb.convert("CMYK").save(os.path.join(d, "cmyk.jpg"), quality=92)
    rgb.convert("L").save(os.path.join(d, "gray.jpg"), quality=92)
    rgb.save(os.path.join(d, "png_inside.JPEG"), format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(os.path.join(d, "exif_rotated.jpg"), quality=92, exif=exif)
    # What PIL (torchvision's loader) decodes each to, as RGB, for the decode test.
    out = {}
    for name in ("cmyk.jpg", "gray.jpg", "png_inside.JPEG", "exif_rotated.jpg"):
        with open(os.path.join(d, name), "rb") as f:
            out[name] = torch.from_numpy(np.array(Image.open(f).convert("RGB")))
    save_file(out, os.path.join(HERE, "fixtures_decoded.safetensors"))
    print("wrote tests/fixtures and fixtures_decoded.safetensors")


def devkit_meta():
    """A meta.mat shaped like the ILSVRC2012 devkit's (struct array `synsets`, compressed), whose
    ILSVRC2012_IDs are a permutation of the sorted-wnid order, (7 i + 3) mod 1000 + 1, plus
    non-leaf synsets: a test that assumed IDs are training indices would fail."""
    import numpy as np
    from scipy.io import savemat
    mapping = os.path.join(HERE, "..", "..", "..", "shared", "data", "imagenet-meta", "LOC_synset_mapping.txt")
    wnids = [line.split()[0] for line in open(mapping)]
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    arr = np.zeros((len(wnids) + 5, 1), dtype=dt)
    for i, w in enumerate(wnids):
        arr[i, 0] = (np.array([[(7 * i + 3) % 1000 + 1]], dtype=np.float64), w, "leaf", np.array([[0.0]]))
    for j in range(5):
        arr[len(wnids) + j, 0] = (np.array([[1001.0 + j]]), f"n0000000{j}", "internal", np.array([[3.0]]))
    savemat(os.path.join(HERE, "..", "fixtures", "meta.mat"), {"synsets": arr}, do_compression=True)
    print("wrote tests/fixtures/meta.mat")


def check(path):
    """Strict-loads a resnet-train file into PolyResNet; prints JSON logits for the det input."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["resnet_train.model"])
    sd = load_file(path)
    act = meta["act"]
    m = polycom.PolyResNet(meta["arch"], act["kind"], act["order"], act.get("axis", "channel"), meta["num_classes"])
    m.load_state_dict(sd, strict=True)
    print(json.dumps({"eval": logits(m, False).flatten().tolist()}))


def train_f64():
    """Adds `{tag}.train_f64` to model_logits.safetensors: train-mode logits computed in float64.
    Train-mode BatchNorm over batch 2 at 64 px (layer4: 8 values per channel) is ill-conditioned:
    float32 and float64 differ by ~1e-2, and float32 results move by as much between CPUs
    (different conv kernels), so the float32 train-mode logits cannot be a portable golden."""
    path = os.path.join(HERE, "model_logits.safetensors")
    out = load_file(path)
    for arch, act, act_init in CASES:
        m = build(arch, act, act_init).double()
        m.train(True)
        with torch.no_grad():
            out[f"{arch}.{act}.train_f64"] = m(det_input().double())
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    print("added the float64 train-mode logits to model_logits.safetensors")


def activations():
    """activations_o1_8.safetensors: polycom.py's PolyReLU / PolyNorm (both axes) for orders 1..8,
    float64, forward and the vector-Jacobian product with a random gy (for the fused operator's
    tests: every order it supports, an odd channel count and spatial size)."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for kind, axis in (("polyrelu", "channel"), ("polynorm", "channel"), ("polynorm", "layer")):
        for order in range(1, 9):
            act = polycom.make_act(kind, order, axis).double()
            with torch.no_grad():
                act.weight.copy_(torch.randn(order, generator=g, dtype=torch.float64) / order)
                act.bias.fill_(-0.125)
            x = torch.randn(2, 7, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
            gy = torch.randn(2, 7, 3, 5, generator=g, dtype=torch.float64)
            y = act(x)
            y.backward(gy)
            key = f"{kind}.o{order}.{axis}"
            out.update({f"{key}.x": x.detach(), f"{key}.w": act.weight.detach().clone(),
                        f"{key}.b": act.bias.detach().clone(), f"{key}.y": y.detach(), f"{key}.gy": gy,
                        f"{key}.gx": x.grad, f"{key}.gw": act.weight.grad, f"{key}.gb": act.bias.grad})
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "activations_o1_8.safetensors"))
    print(f"wrote {len(out)} tensors to activations_o1_8.safetensors")


class BlurPoolConv2d(torch.nn.Module):
    """FFCV's BlurPoolConv2d (libffcv/ffcv-imagenet train_imagenet.py), restated: a depthwise blur
    with the fixed binomial filter, stride 1, padding 1, then the wrapped convolution."""

    def __init__(self, conv):
        super().__init__()
        default_filter = torch.tensor([[[[1, 2, 1], [2, 4, 2], [1, 2, 1]]]]) / 16.0
        self.conv = conv
        self.register_buffer("blur_filter", default_filter.repeat(conv.in_channels, 1, 1, 1))

    def forward(self, x):
        blurred = torch.nn.functional.conv2d(x, self.blur_filter.to(x.dtype), stride=1, padding=(1, 1),
                                             groups=self.conv.in_channels, bias=None)
        return self.conv.forward(blurred)


def apply_blurpool(mod):
    """FFCV's rule: every Conv2d with a stride > 1 and at least 16 input channels."""
    for name, child in mod.named_children():
        if isinstance(child, torch.nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(mod, name, BlurPoolConv2d(child))
        else:
            apply_blurpool(child)


BLURPOOL_CASES = [  # (arch, act, act_init); relu runs in torchvision's own model, as FFCV's does
    ("resnet50", "relu", "paper"),
    ("resnet18", "relu", "paper"),
    ("resnet50", "polynorm", "paper"),
]


def blurpool():
    """blurpool_logits.safetensors: the deterministic models with FFCV's BlurPool applied after
    filling (the weights keep torchvision's names), eval logits in float32 and train-mode logits
    in float64, and the number of convolutions wrapped."""
    out = {}
    for arch, act, act_init in BLURPOOL_CASES:
        if act == "relu":
            m = getattr(torchvision.models, arch)()
            fill(m, 3, act_init)
        else:
            m = build(arch, act, act_init)
        apply_blurpool(m)
        tag = f"{arch}.{act}"
        out[f"{tag}.wrapped"] = torch.tensor([sum(isinstance(x, BlurPoolConv2d) for x in m.modules())])
        out[f"{tag}.eval"] = logits(m, False)
        m = m.double()
        m.train(True)
        with torch.no_grad():
            out[f"{tag}.train_f64"] = m(det_input().double())
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "blurpool_logits.safetensors"))
    print(f"wrote {len(out)} tensors to blurpool_logits.safetensors")


BN_MOMENTUM, BN_EPS = 0.01, 1e-3  # timm's `--bn-momentum` / `--bn-eps` overrides under test


def bn_settings():
    """bn_settings.safetensors: the reference PolyResNet-18 (deterministic weights) with every
    BatchNorm2d's momentum and eps overridden: train-mode logits (float64), then the running
    statistics of two BNs after that one training forward, then eval logits (float32) with them."""
    out = {}
    m = build("resnet18", "polynorm", "paper")
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum, mod.eps = BN_MOMENTUM, BN_EPS
    m = m.double()
    m.train(True)
    with torch.no_grad():
        out["train_f64"] = m(det_input().double())
    for name in ("bn1", "layer4.1.bn2"):
        bn = m.get_submodule(name)
        out[f"{name}.running_mean"] = bn.running_mean.clone()
        out[f"{name}.running_var"] = bn.running_var.clone()
    m = m.float()
    m.train(False)
    with torch.no_grad():
        out["eval"] = m(det_input())
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "bn_settings.safetensors"))
    print(f"wrote {len(out)} tensors to bn_settings.safetensors")


DROPBLOCK_CASES = [  # (shape, drop_prob, block_size, gamma_scale, dtype, seed)
    ((4, 3, 14, 14), 0.1, 5, 0.25, torch.float32, 1),  # ResNet-50 layer3 at 224 px
    ((4, 3, 7, 7), 0.1, 3, 1.0, torch.float32, 2),  # layer4 at 224 px
    ((3, 5, 4, 6), 0.3, 5, 0.25, torch.float32, 3),  # block clipped to an even 4 (timm's even fix)
    ((2, 3, 9, 9), 0.2, 3, 1.0, torch.float64, 4),
    ((2, 4, 8, 8), 0.2, 3, 1.0, torch.bfloat16, 5),
]


def dropblock():
    """dropblock.safetensors: timm 1.0.31's `drop_block_2d` (as ResNet's DropBlock2d calls it)
    on seeded inputs: `case{i}.x`, `case{i}.y` with libtorch's generator seeded by the case's seed
    right before the call; `case{i}.centres`, the block centres that call drew (the same draw
    again: same seed, same `bernoulli_` on the same shape and type), and `case{i}.gamma`, the
    rate it drew them with."""
    from timm.layers.drop import drop_block_2d

    out = {}
    for i, (shape, p, size, scale, dtype, seed) in enumerate(DROPBLOCK_CASES):
        x = (torch.randn(shape, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64) + 1).to(dtype)
        torch.manual_seed(seed)
        y = drop_block_2d(x, drop_prob=p, block_size=size, gamma_scale=scale)
        B, C, H, W = x.shape
        kh, kw = min(size, H), min(size, W)
        gamma = float(scale * p * H * W) / float(kh * kw) / float((H - kh + 1) * (W - kw + 1))
        torch.manual_seed(seed)
        centres = torch.empty((B, 1, H, W), dtype=x.dtype).bernoulli_(gamma)
        out[f"case{i}.x"], out[f"case{i}.y"], out[f"case{i}.centres"] = x, y, centres
        out[f"case{i}.gamma"] = torch.tensor([gamma], dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "dropblock.safetensors"))
    print(f"wrote {len(out)} tensors to dropblock.safetensors")


if __name__ == "__main__":
    if sys.argv[1:2] == ["generate"]:
        generate()
        train_f64()
    elif sys.argv[1:2] == ["activations"]:
        activations()
    elif sys.argv[1:2] == ["blurpool"]:
        blurpool()
    elif sys.argv[1:2] == ["bn-settings"]:
        bn_settings()
    elif sys.argv[1:2] == ["dropblock"]:
        dropblock()
    elif sys.argv[1:2] == ["train-f64"]:
        train_f64()
    elif sys.argv[1:2] == ["check"] and len(sys.argv) == 3:
        check(sys.argv[2])
    else:
        print(__doc__)
