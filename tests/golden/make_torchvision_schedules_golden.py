"""Golden learning-rate curves of torchvision's classification reference (references/
classification/train.py): LinearLR (or ConstantLR) warmup from lr_warmup_decay x lr, then
CosineAnnealingLR, StepLR or ExponentialLR, chained by SequentialLR and stepped once per epoch, as
that script does; and, the same way, torch's MultiStepLR and PolynomialLR, which the script does
not offer.

Writes tests/golden/torchvision_schedules.json: for each case, our config keys, the epochs
trained and the learning rate of every optimizer update. tests/train.rs checks
`schedule_style = "torchvision"` against it.

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.11.0
    /tmp/refvenv/bin/python tests/golden/make_torchvision_schedules_golden.py
"""

import json
import os

import torch
from torch.optim.lr_scheduler import (ConstantLR, CosineAnnealingLR, ExponentialLR, LinearLR,
                                      MultiStepLR, PolynomialLR, SequentialLR, StepLR)

CASES = [
    # name, our keys, optimizer updates per epoch
    ("cosine-warmup", dict(schedule="cosine", lr=0.5, epochs=10, warmup_epochs=3), 4),
    ("cosine-no-warmup", dict(schedule="cosine", lr=0.2, epochs=6, min_lr=1e-3), 2),
    (
        "cosine-warmup-decay-min-lr",
        dict(schedule="cosine", lr=0.8, epochs=12, warmup_epochs=2, lr_warmup_decay=0.1, min_lr=1e-4),
        3,
    ),
    (
        "step-warmup",
        dict(schedule="step", lr=0.1, epochs=9, warmup_epochs=1, step_epochs=3, step_gamma=0.1),
        2,
    ),
    ("step-no-warmup", dict(schedule="step", lr=0.4, epochs=7, step_epochs=2, step_gamma=0.5), 3),
    (
        "cosine-constant-warmup",
        dict(schedule="cosine", lr=0.5, epochs=8, warmup_epochs=2, lr_warmup_method="constant",
             lr_warmup_decay=0.1),
        2,
    ),
    # torchvision's exponentiallr is our step schedule with step_epochs = 1.
    (
        "exponential-warmup",
        dict(schedule="step", lr=0.2, epochs=9, warmup_epochs=2, step_epochs=1, step_gamma=0.8),
        2,
    ),
    (
        "multistep-warmup",
        dict(schedule="multistep", lr=0.4, epochs=12, warmup_epochs=2, decay_milestones=[3, 6, 9],
             step_gamma=0.1),
        2,
    ),
    ("multistep-no-warmup", dict(schedule="multistep", lr=0.1, epochs=6, decay_milestones=[1, 4]), 3),
    ("poly-warmup", dict(schedule="poly", lr=0.3, epochs=10, warmup_epochs=2, poly_power=2.0), 2),
    ("poly-linear", dict(schedule="poly", lr=0.3, epochs=5), 2),
]


def torchvision_curve(keys, updates_per_epoch):
    """The reference script's schedule: the lr of every update, stepped after each epoch."""
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=keys["lr"])
    epochs, warmup = keys["epochs"], keys.get("warmup_epochs", 0)
    kind = keys["schedule"]
    if kind == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=epochs - warmup, eta_min=keys.get("min_lr", 0.0))
    elif kind == "step" and keys["step_epochs"] == 1:
        main = ExponentialLR(optimizer, gamma=keys["step_gamma"])
    elif kind == "step":
        main = StepLR(optimizer, step_size=keys["step_epochs"], gamma=keys["step_gamma"])
    elif kind == "multistep":
        main = MultiStepLR(optimizer, milestones=keys["decay_milestones"], gamma=keys.get("step_gamma", 0.1))
    else:
        main = PolynomialLR(optimizer, total_iters=epochs - warmup, power=keys.get("poly_power", 1.0))
    if warmup > 0:
        factor = keys.get("lr_warmup_decay", 0.01)
        if keys.get("lr_warmup_method", "linear") == "constant":
            start = ConstantLR(optimizer, factor=factor, total_iters=warmup)
        else:
            start = LinearLR(optimizer, start_factor=factor, total_iters=warmup)
        scheduler = SequentialLR(optimizer, schedulers=[start, main], milestones=[warmup])
    else:
        scheduler = main
    lrs = []
    for _ in range(epochs):
        for _ in range(updates_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
        scheduler.step()
    return lrs


def main():
    cases = []
    for name, keys, updates_per_epoch in CASES:
        lrs = torchvision_curve(keys, updates_per_epoch)
        cases.append(dict(name=name, keys=keys, steps_per_epoch=updates_per_epoch,
                          epochs_trained=keys["epochs"], lrs=lrs))
    out = os.path.join(os.path.dirname(__file__), "torchvision_schedules.json")
    with open(out, "w") as f:
        json.dump(dict(torch=torch.__version__, cases=cases), f, indent=1)
    print(f"wrote {out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
