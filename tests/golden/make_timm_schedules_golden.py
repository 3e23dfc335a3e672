"""Golden learning-rate curves from timm's own schedulers, stepped as timm's train.py steps them.

Writes tests/golden/timm_schedules.json: for each case, our config keys (what `resnet-train
train` is given), timm's arguments, the epochs timm trains (create_scheduler_v2's num_epochs) and
the learning rate of every optimizer update. tests/train.rs checks `schedule_style = "timm"`
against it.

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.11.0 && \
        /tmp/refvenv/bin/pip install --no-deps timm==1.0.31
    /tmp/refvenv/bin/python tests/golden/make_timm_schedules_golden.py
"""

import json
import os

import timm
import torch
from timm.scheduler import create_scheduler_v2

# Our `schedule` kinds in timm's names: `linear` is timm's `poly` with power (decay_rate) 1.
TIMM_SCHED = {"cosine": "cosine", "step": "step", "linear": "poly"}

CASES = [
    # name, our keys, optimizer updates per epoch
    ("cosine-default-warmup", dict(schedule="cosine", lr=0.4, epochs=10, warmup_epochs=3), 4),
    (
        "cosine-prefix-cooldown",
        dict(schedule="cosine", lr=0.1, epochs=10, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5,
             cooldown_epochs=2, warmup_prefix=True),
        3,
    ),
    (
        "cosine-on-updates",
        dict(schedule="cosine", lr=5e-3, epochs=6, warmup_epochs=2, min_lr=1e-6, cooldown_epochs=1,
             sched_on_updates=True),
        5,
    ),
    (
        "cosine-on-updates-prefix",
        dict(schedule="cosine", lr=5e-3, epochs=4, warmup_epochs=1, warmup_lr=0.0,
             warmup_prefix=True, sched_on_updates=True),
        7,
    ),
    ("cosine-no-warmup", dict(schedule="cosine", lr=0.2, epochs=5, min_lr=0.002), 2),
    (
        "step",
        dict(schedule="step", lr=0.1, epochs=9, warmup_epochs=1, step_epochs=3, step_gamma=0.5),
        2,
    ),
    (
        "linear-cooldown",
        dict(schedule="linear", lr=0.8, epochs=8, warmup_epochs=2, min_lr=1e-4, cooldown_epochs=2),
        3,
    ),
    (
        "linear-on-updates",
        dict(schedule="linear", lr=0.8, epochs=3, warmup_epochs=1, sched_on_updates=True),
        4,
    ),
]


def timm_curve(keys, updates_per_epoch):
    """timm train.py's loop: the lr of every update over the epochs timm trains."""
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=keys["lr"])
    on_updates = keys.get("sched_on_updates", False)
    kind = TIMM_SCHED[keys["schedule"]]
    scheduler, num_epochs = create_scheduler_v2(
        optimizer,
        sched=kind,
        num_epochs=keys["epochs"],
        decay_epochs=keys.get("step_epochs", 30),
        cooldown_epochs=keys.get("cooldown_epochs", 0),
        # timm's `--decay-rate` is the step schedule's factor and the poly schedule's power.
        decay_rate=1.0 if kind == "poly" else keys.get("step_gamma", 0.1),
        min_lr=keys.get("min_lr", 0.0),
        warmup_lr=keys.get("warmup_lr", 1e-5),
        warmup_epochs=keys.get("warmup_epochs", 0),
        warmup_prefix=keys.get("warmup_prefix", False),
        step_on_epochs=not on_updates,
        updates_per_epoch=updates_per_epoch,
    )
    lrs = []
    num_updates = 0
    for epoch in range(num_epochs):
        for _ in range(updates_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
        scheduler.step(epoch + 1)
    return num_epochs, lrs


def main():
    cases = []
    for name, keys, updates_per_epoch in CASES:
        num_epochs, lrs = timm_curve(keys, updates_per_epoch)
        cases.append(dict(name=name, keys=keys, steps_per_epoch=updates_per_epoch,
                          epochs_trained=num_epochs, lrs=lrs))
    out = os.path.join(os.path.dirname(__file__), "timm_schedules.json")
    with open(out, "w") as f:
        json.dump(dict(timm=timm.__version__, torch=torch.__version__, cases=cases), f, indent=1)
    print(f"wrote {out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
