"""Generates tests/golden/train_golden.safetensors: what PyTorch and timm compute for the optimizers
(torch.optim.Adam, AdamW, RAdam and NAdam, timm's Lamb, Lars, Lion, RMSpropTF, NAdamW, Adopt, Adan,
LaProp and AdaBelief, and its cautious variants), the EMA decay, the losses
(AugMix's JSD too) and the gradient clipping modes that resnet-train reimplements on libtorch's
kernels (needs torch==2.11.0, timm==1.0.31, safetensors). Rerun from the repo root:

  python tests/golden/make_train_golden.py

Every input (initial parameters, gradients per step, logits, targets) is stored next to the
results, so the Rust tests (src/train/step/optim, src/train/step/loss.rs, src/train/step/ema.rs) read both.
"""
import os

import torch
from safetensors.torch import save_file
from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import SGDW, AdaBelief, Adan, Adopt, AdamWLegacy, Lamb, LaProp, Lars, Lion, NAdamW, RMSpropTF
from timm.utils.clip_grad import dispatch_clip_grad
from timm.utils.model_ema import ModelEmaV3

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)
out = {}

# ---- Optimizers: two parameter groups (decay / no decay), three steps with fixed gradients. ----
P1 = torch.randn(3, 4)
P2 = torch.randn(5)
GRADS = [(torch.randn(3, 4) * s, torch.randn(5) * s) for s in (1.0, 3.0, 0.5)]  # step 2 clips in Lamb
out["opt.p1.init"], out["opt.p2.init"] = P1, P2
for t, (g1, g2) in enumerate(GRADS):
    out[f"opt.p1.grad.{t}"], out[f"opt.p2.grad.{t}"] = g1, g2


def run(make, steps=3):
    p1, p2 = P1.clone().requires_grad_(), P2.clone().requires_grad_()
    opt = make([{"params": [p1], "weight_decay": 0.05}, {"params": [p2], "weight_decay": 0.0}])
    after = []
    for t in range(steps):
        g1, g2 = GRADS[t % len(GRADS)]
        p1.grad, p2.grad = g1.clone(), g2.clone()
        opt.step()
        after.append((p1.detach().clone(), p2.detach().clone()))
    return after


# LARC at trust_coeff 0.02 clips (ratio / lr > 1) at some steps and not at others; p2's group has no
# weight decay, so LARS leaves it to plain SGD momentum.
for name, make in {
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.999), eps=1e-8),
    "adam": lambda groups: torch.optim.Adam(groups, lr=0.01, betas=(0.9, 0.999), eps=1e-8),
    # timm's create_optimizer_v2 builds Lion with foreach=True; its default betas are (0.9, 0.99).
    "lion": lambda groups: Lion(groups, lr=0.01, foreach=True),
    # timm's cautious variants: 'clion' = Lion(caution=True), 'cadamw' = AdamWLegacy(caution=True).
    "clion": lambda groups: Lion(groups, lr=0.01, caution=True, foreach=True),
    "cadamw": lambda groups: AdamWLegacy(groups, lr=0.01, caution=True, foreach=True),
    # timm's factory: nadamw = NAdamW, cnadamw = NAdamW(caution=True); adopt/adoptw = Adopt with
    # L2 / decoupled decay, cadopt/cadoptw with caution (its defaults: betas (0.9, 0.9999), eps
    # 1e-6, clip_exp 0.333). foreach=True: the multi-tensor paths resnet-train follows.
    "nadamw": lambda groups: NAdamW(groups, lr=0.01, foreach=True),
    "cnadamw": lambda groups: NAdamW(groups, lr=0.01, caution=True, foreach=True),
    "adopt": lambda groups: Adopt(groups, lr=0.01, foreach=True),
    "adoptw": lambda groups: Adopt(groups, lr=0.01, decoupled=True, foreach=True),
    "cadopt": lambda groups: Adopt(groups, lr=0.01, caution=True, foreach=True),
    "cadoptw": lambda groups: Adopt(groups, lr=0.01, decoupled=True, caution=True, foreach=True),
    # timm's factory: rmsproptf = RMSpropTF(alpha=0.9), momentum from train.py's --momentum.
    "rmsproptf": lambda groups: RMSpropTF(groups, lr=0.01, alpha=0.9, momentum=0.9, foreach=True),
    # timm's factory: sgdw = SGDW(nesterov=True), momentum from train.py's --momentum.
    "sgdw": lambda groups: SGDW(groups, lr=0.01, momentum=0.9, nesterov=True, foreach=True),
    "lamb": lambda groups: Lamb(groups, lr=0.01, betas=(0.9, 0.999), eps=1e-6),
    "lambc": lambda groups: Lamb(groups, lr=0.01, betas=(0.9, 0.999), eps=1e-6, trust_clip=True),
    "lars": lambda groups: Lars(groups, lr=0.01, momentum=0.9),
    "larc": lambda groups: Lars(groups, lr=0.01, momentum=0.9, trust_coeff=0.02, trust_clip=True),
    "nlars": lambda groups: Lars(groups, lr=0.01, momentum=0.9, nesterov=True),
    "nlarc": lambda groups: Lars(groups, lr=0.01, momentum=0.9, nesterov=True, trust_coeff=0.02, trust_clip=True),
    # timm's factory: lambw/lambcw = Lamb(decoupled_decay=True[, trust_clip=True]), clamb/clambw
    # with caution.
    "lambw": lambda groups: Lamb(groups, lr=0.01, decoupled_decay=True),
    "lambcw": lambda groups: Lamb(groups, lr=0.01, decoupled_decay=True, trust_clip=True),
    "clamb": lambda groups: Lamb(groups, lr=0.01, caution=True),
    "clambw": lambda groups: Lamb(groups, lr=0.01, decoupled_decay=True, caution=True),
    # adan/adanw = Adan(no_prox=False/True), cadan/cadanw with caution; default betas (0.98, 0.92, 0.99).
    "adan": lambda groups: Adan(groups, lr=0.01, foreach=True),
    "adanw": lambda groups: Adan(groups, lr=0.01, no_prox=True, foreach=True),
    "cadan": lambda groups: Adan(groups, lr=0.01, caution=True, foreach=True),
    "cadanw": lambda groups: Adan(groups, lr=0.01, no_prox=True, caution=True, foreach=True),
    "adan_betas": lambda groups: Adan(groups, lr=0.01, betas=(0.9, 0.8, 0.95), eps=1e-6, foreach=True),
    "laprop": lambda groups: LaProp(groups, lr=0.01, foreach=True),
    "claprop": lambda groups: LaProp(groups, lr=0.01, caution=True, foreach=True),
}.items():
    for t, (a1, a2) in enumerate(run(make)):
        out[f"{name}.p1.after.{t}"], out[f"{name}.p2.after.{t}"] = a1, a2

# Rectified optimizers switch on their rectification at step 6 (rho_t > 5 at beta2 0.999): nine
# steps (the three gradients, three times) cover both sides. timm's factory: radam/radamw =
# torch.optim.RAdam([decoupled_weight_decay=True]), nadam = torch.optim.NAdam, adabelief =
# AdaBelief(rectify=False), radabelief = AdaBelief(rectify=True).
for name, make in {
    "radam": lambda groups: torch.optim.RAdam(groups, lr=0.01, foreach=True),
    "radamw": lambda groups: torch.optim.RAdam(groups, lr=0.01, decoupled_weight_decay=True, foreach=True),
    "nadam": lambda groups: torch.optim.NAdam(groups, lr=0.01, foreach=True),
    "adabelief": lambda groups: AdaBelief(groups, lr=0.01, rectify=False, foreach=True),
    "radabelief": lambda groups: AdaBelief(groups, lr=0.01, rectify=True, foreach=True),
}.items():
    for t, (a1, a2) in enumerate(run(make, steps=9)):
        out[f"{name}.p1.after.{t}"], out[f"{name}.p2.after.{t}"] = a1, a2

# timm's corrected weight decay (its adamc, nadamc, adoptc, lionc): built at the peak lr 0.02
# (what timm's max_lr snapshots), stepped at lr 0.01 as a schedule would, so each step decays by
# 1 - 0.01^2 / 0.02 x wd.
def at_lower_lr(make):
    def built(groups):
        opt = make(groups)
        for g in opt.param_groups:
            g["lr"] = 0.01
        return opt
    return built


for name, make in {
    "adamc": lambda groups: AdamWLegacy(groups, lr=0.02, corrected_weight_decay=True, foreach=True),
    "nadamc": lambda groups: NAdamW(groups, lr=0.02, corrected_weight_decay=True, foreach=True),
    "adoptc": lambda groups: Adopt(groups, lr=0.02, decoupled=True, corrected_weight_decay=True, foreach=True),
    "lionc": lambda groups: Lion(groups, lr=0.02, corrected_weight_decay=True, foreach=True),
    "sgdc": lambda groups: SGDW(groups, lr=0.02, momentum=0.9, nesterov=True, corrected_weight_decay=True,
                                foreach=True),
    "lapropc": lambda groups: LaProp(groups, lr=0.02, corrected_weight_decay=True, foreach=True),
}.items():
    for t, (a1, a2) in enumerate(run(at_lower_lr(make))):
        out[f"{name}.p1.after.{t}"], out[f"{name}.p2.after.{t}"] = a1, a2

# ---- EMA: ModelEmaV3.get_decay with and without warmup. ----
STEPS = [0, 1, 2, 3, 10, 100, 1000, 100000, 10000000]
out["ema.steps"] = torch.tensor(STEPS, dtype=torch.float64)
m = torch.nn.Linear(2, 2)
for warm in (False, True):
    ema = ModelEmaV3(m, decay=0.9998, use_warmup=warm)
    out[f"ema.decay.warmup{int(warm)}"] = torch.tensor([ema.get_decay(s) for s in STEPS], dtype=torch.float64)

# ---- Losses on fixed logits: hard and soft targets. ----
logits = torch.randn(6, 5) * 3
labels = torch.tensor([0, 4, 2, 2, 1, 3])
soft = torch.softmax(torch.randn(6, 5), dim=1)
out["loss.logits"], out["loss.labels"], out["loss.soft"] = logits, labels, soft
out["loss.ce_smooth0.1"] = LabelSmoothingCrossEntropy(smoothing=0.1)(logits, labels).reshape(1)
out["loss.ce"] = torch.nn.functional.cross_entropy(logits, labels).reshape(1)
out["loss.soft_ce"] = SoftTargetCrossEntropy()(logits, soft).reshape(1)
out["loss.bce_smooth0.1"] = BinaryCrossEntropy(smoothing=0.1)(logits, labels).reshape(1)
out["loss.bce_smooth0.1_thresh0.2"] = BinaryCrossEntropy(smoothing=0.1, target_threshold=0.2)(logits, labels).reshape(1)
out["loss.bce_soft_thresh0.2"] = BinaryCrossEntropy(target_threshold=0.2)(logits, soft).reshape(1)
# timm's `--bce-sum` (sum over classes, mean over the batch) and `--bce-pos-weight`.
out["loss.bce_sum_smooth0.1"] = BinaryCrossEntropy(smoothing=0.1, sum_classes=True)(logits, labels).reshape(1)
out["loss.bce_pos2_smooth0.1"] = BinaryCrossEntropy(smoothing=0.1, pos_weight=2.0)(logits, labels).reshape(1)
out["loss.bce_soft_sum_pos0.5_thresh0.2"] = BinaryCrossEntropy(
    target_threshold=0.2, sum_classes=True, pos_weight=0.5)(logits, soft).reshape(1)

# ---- Gradient clipping: timm's dispatch_clip_grad in each mode, as train.py calls it (AGC without
# the classifier, the last two parameters). Parameters named as resnet-train names them; some units'
# gradients are far above AGC's bound, some below; the PolyNorm bias is 0 (AGC's eps floor). ----
CLIP_PARAMS = {
    "conv1.weight": (torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3) * torch.tensor([0.01, 1.0, 5.0, 0.1]).view(4, 1, 1, 1)),
    "bn1.weight": (torch.rand(4) + 0.5, torch.randn(4) * 0.3),
    "layer1.0.act1.weight": (torch.full((3,), 1 / 3), torch.randn(3) * 0.01),
    "layer1.0.act1.bias": (torch.zeros(1), torch.randn(1)),
    "fc.weight": (torch.randn(10, 4), torch.randn(10, 4) * 4),
    "fc.bias": (torch.zeros(10), torch.randn(10)),
}
for name, (p, g) in CLIP_PARAMS.items():
    out[f"clip.{name}.param"], out[f"clip.{name}.grad"] = p, g
for mode, value in (("norm", 1.5), ("value", 0.5), ("agc", 0.05)):
    params = [p.clone().requires_grad_() for p, _ in CLIP_PARAMS.values()]
    for p, (_, g) in zip(params, CLIP_PARAMS.values()):
        p.grad = g.clone()
    dispatch_clip_grad(params[:-2] if mode == "agc" else params, value=value, mode=mode)
    for name, p in zip(CLIP_PARAMS, params):
        out[f"clip.{mode}.{name}.grad"] = p.grad

# ---- AugMix's JSD loss: timm's JsdCrossEntropy on 3 splits of 4 samples (clean split first); one
# augmented split far from the clean one, so the divergence term matters. Drawn last, so the values
# above keep their draws. ----
jsd_logits = torch.randn(12, 10) * 2.0
jsd_logits[8:] += torch.randn(4, 10) * 3.0
jsd_labels = torch.randint(0, 10, (4,)).repeat(3)
out["jsd.logits"], out["jsd.labels"] = jsd_logits, jsd_labels
out["jsd.loss"] = JsdCrossEntropy(num_splits=3, smoothing=0.0)(jsd_logits, jsd_labels).reshape(1)
out["jsd.loss_smooth0.1"] = JsdCrossEntropy(num_splits=3, smoothing=0.1)(jsd_logits, jsd_labels).reshape(1)

out = {k: v.contiguous() for k, v in out.items()}
save_file(out, os.path.join(HERE, "train_golden.safetensors"))
print(f"wrote {len(out)} tensors")
