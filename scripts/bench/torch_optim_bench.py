"""PyTorch baseline for `resnet-train bench --opt momentum|adamw|adam|lamb|lion|rmsproptf|clion|cadamw|nadamw|adopt|...`: the training
step of ../shared/bench/torch_train_bench.py (forward + loss under autocast, backward, optimizer
step) with torch.optim.SGD / AdamW / Adam (fused=True: the kernels resnet-train calls), or timm's Lamb,
Lion (clion: with caution), AdamWLegacy with caution (cadamw), NAdamW (cnadamw: with caution),
Adopt (adoptw: decoupled decay; cadopt, cadoptw: with caution), SGDW (sgdw), Lamb with decoupled decay / trust
clip / caution (lambw, lambcw, clamb, clambw), Adan (adanw: no_prox; cadan, cadanw: with caution), LaProp
(claprop), AdaBelief (radabelief: rectified), torch.optim's RAdam (radamw: decoupled decay) and NAdam, or
RMSpropTF (foreach, as timm's factory builds Lion), and the same parameter groups as resnet-train (weight decay on conv/fc weights only). Prints one JSON line with
torch_train_bench.py's fields.
Needs torch==2.11.0 and timm (for lamb, lion and rmsproptf):

  python scripts/bench/torch_optim_bench.py --opt adamw --arch resnet50 --act polynorm --precision bf16 \
      --batch 8 --res 128 --device cpu --steps 10 --warmup 3 --threads 2
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "reference"))
from polycom import PolyResNet  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--opt", default="adamw", choices=["momentum", "adamw", "adam", "lamb", "lion", "rmsproptf", "clion", "cadamw", "nadamw", "cnadamw", "adopt", "adoptw", "cadopt", "cadoptw", "sgdw",
                                                         "lambw", "lambcw", "clamb", "clambw", "adan", "adanw", "cadan", "cadanw",
                                                         "laprop", "claprop", "adabelief", "radabelief", "radam", "radamw", "nadam"])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--act", default="relu", choices=["relu", "polyrelu", "polynorm"])
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = PolyResNet(a.arch, a.act, a.order, num_classes=a.classes).to(dev)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and ".act" not in n and not n.startswith("act")]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}]
    if a.opt == "momentum":
        # fused=True: the kernel resnet-train calls (torch.optim.SGD's default on the CPU is its
        # per-tensor loop, ../shared/bench/torch_train_bench.py's row).
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, fused=True)
    elif a.opt == "adamw":
        opt = torch.optim.AdamW(groups, lr=1e-3, fused=True)
    elif a.opt == "adam":
        opt = torch.optim.Adam(groups, lr=1e-3, fused=True)
    elif a.opt == "rmsproptf":
        from timm.optim import RMSpropTF
        opt = RMSpropTF(groups, lr=1e-3, alpha=0.9, momentum=0.9, foreach=True)
    elif a.opt in ("lion", "clion"):
        from timm.optim import Lion
        opt = Lion(groups, lr=1e-4, caution=a.opt == "clion", foreach=True)
    elif a.opt == "cadamw":
        from timm.optim import AdamWLegacy
        opt = AdamWLegacy(groups, lr=1e-3, caution=True, foreach=True)
    elif a.opt in ("nadamw", "cnadamw"):
        from timm.optim import NAdamW
        opt = NAdamW(groups, lr=1e-3, caution=a.opt == "cnadamw", foreach=True)
    elif a.opt == "sgdw":
        from timm.optim import SGDW
        opt = SGDW(groups, lr=1e-3, momentum=0.9, nesterov=True, foreach=True)
    elif a.opt in ("adopt", "adoptw", "cadopt", "cadoptw"):
        from timm.optim import Adopt
        opt = Adopt(groups, lr=1e-3, decoupled=a.opt.endswith("w"), caution=a.opt.startswith("c"), foreach=True)
    elif a.opt in ("lambw", "lambcw", "clamb", "clambw"):
        from timm.optim import Lamb
        opt = Lamb(groups, lr=1e-3, trust_clip="lambc" in a.opt, caution=a.opt.startswith("c"),
                   decoupled_decay=a.opt.endswith("w"), foreach=True)
    elif a.opt in ("adan", "adanw", "cadan", "cadanw"):
        from timm.optim import Adan
        opt = Adan(groups, lr=1e-3, no_prox=a.opt.endswith("w"), caution=a.opt.startswith("c"), foreach=True)
    elif a.opt in ("laprop", "claprop"):
        from timm.optim import LaProp
        opt = LaProp(groups, lr=1e-3, caution=a.opt == "claprop", foreach=True)
    elif a.opt in ("adabelief", "radabelief"):
        from timm.optim import AdaBelief
        opt = AdaBelief(groups, lr=1e-3, rectify=a.opt == "radabelief", foreach=True)
    elif a.opt in ("radam", "radamw"):
        opt = torch.optim.RAdam(groups, lr=1e-3, decoupled_weight_decay=a.opt == "radamw", foreach=True)
    elif a.opt == "nadam":
        opt = torch.optim.NAdam(groups, lr=1e-3, foreach=True)
    else:
        from timm.optim import Lamb
        opt = Lamb(groups, lr=1e-3)
    amp_dtype = {"bf16": torch.bfloat16}.get(a.precision)
    x = torch.randn(a.batch, 3, a.res, a.res, device=dev)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    dt = time.perf_counter() - t0
    print(json.dumps({
        "impl": f"pytorch-eager+{a.opt}", "torch": torch.__version__, "arch": a.arch, "act": a.act,
        "order": a.order, "precision": a.precision, "batch": a.batch, "res": a.res, "device": a.device,
        "threads": torch.get_num_threads(), "steps": a.steps,
        "img_per_s": round(a.batch * a.steps / dt, 2), "ms_per_step": round(1000 * dt / a.steps, 2),
        "final_loss": float(loss.detach()),
    }))


if __name__ == "__main__":
    main()
