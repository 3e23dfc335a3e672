"""torch.optim.SGD's step alone over ResNet-50's parameters (25.6 M), in its three CPU
implementations: the per-tensor loop (the CPU default), foreach, and fused=True (the kernel
resnet-train's momentum SGD calls). Prints one JSON line of ms per step.
  python scripts/bench/torch_sgd_step_bench.py --threads 2
"""
import argparse
import json
import time

import torch
import torchvision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    params = list(torchvision.models.resnet50().parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    out = {"threads": torch.get_num_threads(), "params": sum(p.numel() for p in params)}
    for name, kw in [("per_tensor", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]:
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, **kw)
        for _ in range(3):
            opt.step()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            opt.step()
        out[name + "_ms"] = round(1000 * (time.perf_counter() - t0) / a.steps, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
