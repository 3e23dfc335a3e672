"""PyTorch eager (or torch.compile) training step with FFCV's BlurPool: ../shared/bench's
torch_train_bench.py on the reference PolyResNet wrapped by FFCV's rule (tests/golden/make_golden.py's
BlurPoolConv2d / apply_blurpool, checked against resnet-train in tests/model.rs). Same flags and
JSON line as torch_train_bench.py, "impl" suffixed "+blurpool".

  python scripts/bench/torch_blurpool_bench.py --arch resnet50 --precision bf16 --batch 16 --res 128 \\
      --device cpu --threads 2
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "bench"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "golden"))
import torch_train_bench  # noqa: E402
from make_golden import apply_blurpool  # noqa: E402

Plain = torch_train_bench.PolyResNet


def blurred(*args, **kwargs):
    model = Plain(*args, **kwargs)
    apply_blurpool(model)
    return model


if __name__ == "__main__":
    torch_train_bench.PolyResNet = blurred
    printed = []
    torch_train_bench.print = lambda line: printed.append(line)
    torch_train_bench.main()
    print(printed[0].replace('"impl": "pytorch-eager', '"impl": "pytorch-eager+blurpool'))
