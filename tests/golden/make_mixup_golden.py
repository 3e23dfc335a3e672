"""Golden values for Mixup/CutMix from timm 1.0.31 (timm.data.mixup), for src/train/mixup.rs.

    python tests/golden/make_mixup_golden.py     # needs torch, timm, safetensors

timm draws lam and the CutMix box with numpy's global generator, which the Rust side does not
share; so the goldens fix them: Mixup._mix_batch with lam given (np.random.beta patched), CutMix's
box patched the same way, and mixup_target for the soft targets.
"""
import numpy as np
import torch
from safetensors.torch import save_file
from timm.data import mixup as tm

torch.manual_seed(0)
x = torch.randn(4, 3, 8, 8)
y = torch.tensor([0, 3, 1, 4])
out = {"x": x, "y": y}

# Mixup at lam 0.3, smoothing 0.1, 5 classes.
m = tm.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.1, num_classes=5)
np.random.beta = lambda a, b: 0.3
xm = x.clone()
lam = m._mix_batch(xm)
out["mixup.x"] = xm
out["mixup.target"] = tm.mixup_target(y, 5, lam, 0.1)

# CutMix with the box fixed at rows 2..6, cols 1..5 (lam corrected to 1 - 16/64).
tm.rand_bbox = lambda img_shape, lam, margin=0.0, count=None: (2, 6, 1, 5)
c = tm.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.1, num_classes=5)
np.random.beta = lambda a, b: 0.7
xc = x.clone()
lam_c = c._mix_batch(xc)
out["cutmix.x"] = xc
out["cutmix.lam"] = torch.tensor([lam_c], dtype=torch.float64)
out["cutmix.target"] = tm.mixup_target(y, 5, lam_c, 0.1)
# Modes "elem" and "pair" (_mix_elem / _mix_pair) with every draw fixed: per-sample lams from
# np.random.beta(size=...), np.random.rand -> 0 (always mixed, Mixup where both are on), boxes in order.
np.random.rand = lambda n: np.zeros(n)
BOXES = [(0, 4, 0, 4), (2, 6, 1, 5), (1, 3, 3, 8), (4, 8, 2, 6)]


def boxes_in_order():
    it = iter(BOXES)
    tm.rand_bbox = lambda img_shape, lam, margin=0.0, count=None: next(it)


for mode, lams in (("elem", [0.3, 0.6, 0.8, 0.45]), ("pair", [0.3, 0.6])):
    for kind in ("mixup", "cutmix"):
        np.random.beta = lambda a, b, size=None, lams=lams: np.array(lams[:size])
        boxes_in_order()
        alphas = dict(mixup_alpha=1.0, cutmix_alpha=0.0) if kind == "mixup" else dict(mixup_alpha=0.0, cutmix_alpha=1.0)
        mm = tm.Mixup(**alphas, prob=1.0, label_smoothing=0.1, num_classes=5, mode=mode)
        xe = x.clone()
        lam_e = mm._mix_elem(xe) if mode == "elem" else mm._mix_pair(xe)
        out[f"{mode}.{kind}.x"] = xe
        out[f"{mode}.{kind}.lam"] = lam_e.to(torch.float64)
        out[f"{mode}.{kind}.target"] = tm.mixup_target(y, 5, lam_e, 0.1)
save_file({k: v.contiguous() for k, v in out.items()}, "tests/golden/mixup.safetensors")
print("lam", lam, "cutmix lam", lam_c)
