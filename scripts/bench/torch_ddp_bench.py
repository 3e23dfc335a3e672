"""PyTorch DDP baseline for `resnet-train launch -- bench`: torchvision's ResNet, SGD momentum,
cross-entropy, synthetic data, DistributedDataParallel over Gloo (CPU) or NCCL (CUDA). Run it
with torchrun; rank 0 prints one JSON line with the fields of `resnet-train bench --json`.

    torchrun --nproc-per-node 2 scripts/bench/torch_ddp_bench.py --arch resnet18 --batch 16 --res 64
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torchvision


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=32, help="images per rank")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if a.device == "cuda" else "cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = dist.get_world_size()
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.arch)(num_classes=a.classes).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.res, a.res, device=device)
    y = torch.randint(a.classes, (a.batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    dt = time.perf_counter() - t0
    # The gradient all-reduce alone (DDP's buckets are ~25 MB; one flat tensor of all gradients
    # here), as many times as steps.
    flat = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
    dist.barrier()
    t1 = time.perf_counter()
    for _ in range(a.steps):
        dist.all_reduce(flat)
        flat /= world
    allreduce = time.perf_counter() - t1
    if dist.get_rank() == 0:
        print(json.dumps({
            "impl": "pytorch-ddp", "torch": torch.__version__, "arch": a.arch, "batch": a.batch, "res": a.res,
            "device": a.device, "world": world, "threads": torch.get_num_threads(), "steps": a.steps,
            "dist_backend": dist.get_backend(), "img_per_s": round(a.batch * world * a.steps / dt, 2),
            "ms_per_step": round(1000 * dt / a.steps, 2), "allreduce_ms": round(1000 * allreduce / a.steps, 2),
            "final_loss": loss,
        }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
