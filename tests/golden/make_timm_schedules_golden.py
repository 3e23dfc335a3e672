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
TIMM_SCHED = {"cosine": "cosine", "step": "step", "linear": "poly", "poly": "poly", "tanh": "tanh",
              "multistep": "multistep", "constant": "constant", "wsd": "wsd", "rsqrt": "rsqrt"}

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
    # tanh: the warmup ends at the tanh curve's value there (timm warms up to _get_lr(warmup_t)).
    ("tanh-warmup", dict(schedule="tanh", lr=0.3, epochs=8, warmup_epochs=2, min_lr=1e-4), 3),
    (
        "tanh-prefix-cooldown",
        dict(schedule="tanh", lr=0.1, epochs=6, warmup_epochs=1, warmup_prefix=True, cooldown_epochs=2),
        2,
    ),
    # No warmup: the first epoch runs at the optimizer's lr, not the tanh curve's first value.
    ("tanh-no-warmup", dict(schedule="tanh", lr=0.2, epochs=5), 2),
    (
        "tanh-cycles-prefix",
        dict(schedule="tanh", lr=0.2, epochs=3, warmup_epochs=1, warmup_prefix=True, lr_cycle_limit=2,
             lr_cycle_decay=0.3),
        2,
    ),
    # multistep: milestone m applies from epoch m - 1 (timm's convention), counted from epoch 0.
    (
        "multistep-warmup",
        dict(schedule="multistep", lr=0.1, epochs=10, warmup_epochs=2, decay_milestones=[3, 6, 8],
             step_gamma=0.5),
        2,
    ),
    (
        "multistep-on-updates-prefix",
        dict(schedule="multistep", lr=0.1, epochs=5, warmup_epochs=1, warmup_prefix=True,
             decay_milestones=[2, 4], sched_on_updates=True),
        3,
    ),
    ("multistep-milestone-1", dict(schedule="multistep", lr=0.1, epochs=4, decay_milestones=[1, 3]), 2),
    (
        "poly-power-k-decay",
        dict(schedule="poly", poly_power=2.0, lr=0.5, epochs=6, warmup_epochs=1, lr_k_decay=1.5,
             min_lr=1e-3),
        3,
    ),
    (
        "cosine-cycles-cooldown",
        dict(schedule="cosine", lr=0.4, epochs=4, warmup_epochs=1, lr_cycle_limit=3, lr_cycle_decay=0.5,
             cooldown_epochs=1, min_lr=1e-4),
        2,
    ),
    (
        "cosine-cycle-mul-k-decay",
        dict(schedule="cosine", lr=0.4, epochs=3, lr_cycle_limit=3, lr_cycle_mul=2.0, lr_k_decay=0.7),
        2,
    ),
    (
        "cosine-cycle-mul-on-updates",
        dict(schedule="cosine", lr=0.1, epochs=2, warmup_epochs=1, lr_cycle_limit=2, lr_cycle_mul=1.5,
             sched_on_updates=True),
        4,
    ),
    (
        "linear-cycles",
        dict(schedule="linear", lr=0.2, epochs=3, lr_cycle_limit=2, lr_cycle_decay=0.5, min_lr=0.01),
        2,
    ),
    (
        "cosine-noise-range",
        dict(schedule="cosine", lr=0.1, epochs=10, warmup_epochs=2, lr_noise=[0.3, 0.8], seed=7),
        2,
    ),
    (
        "step-noise-on-updates",
        dict(schedule="step", lr=0.1, epochs=6, step_epochs=2, lr_noise=[0.5], lr_noise_pct=0.3,
             lr_noise_std=0.5, seed=42, sched_on_updates=True),
        3,
    ),
    ("constant-warmup", dict(schedule="constant", lr=0.1, epochs=3, warmup_epochs=1), 2),
    # wsd / rsqrt (WSDLRScheduler): the stable + decay phases fit in epochs - warmup unless
    # prefixed; decay_epochs < 1 is a fraction of them, rounded half to even.
    ("wsd-default", dict(schedule="wsd", lr=0.4, epochs=10, warmup_epochs=2, min_lr=1e-4), 3),
    # 0.3 x 25 updates = 7.5, rounded to 8.
    (
        "wsd-on-updates-fraction",
        dict(schedule="wsd", lr=0.1, epochs=6, warmup_epochs=1, decay_epochs=0.3, sched_on_updates=True),
        5,
    ),
    # 0.5 x 5 epochs = 2.5, rounded to 2.
    ("wsd-half-to-even", dict(schedule="wsd", lr=0.1, epochs=7, warmup_epochs=2, decay_epochs=0.5), 2),
    (
        "wsd-prefix-cosine-cooldown",
        dict(schedule="wsd", lr=0.2, epochs=8, warmup_epochs=2, warmup_prefix=True, warmup_lr=0.0,
             decay_epochs=3, lr_decay_fn="cosine", cooldown_epochs=1, min_lr=1e-3),
        2,
    ),
    (
        "wsd-power-noise",
        dict(schedule="wsd", lr=0.1, epochs=10, decay_epochs=0.5, lr_decay_fn="power", lr_noise=[0.5],
             seed=3),
        2,
    ),
    ("wsd-exp-no-warmup", dict(schedule="wsd", lr=0.3, epochs=6, decay_epochs=4, lr_decay_fn="exp"), 2),
    ("rsqrt-default", dict(schedule="rsqrt", lr=0.2, epochs=12, warmup_epochs=2, min_lr=1e-4), 2),
    # Without a warmup the timescale is given; the stable phase falls to min_lr and stays there.
    (
        "rsqrt-timescale-floor-on-updates",
        dict(schedule="rsqrt", lr=0.02, epochs=6, lr_stable_timescale=1.5, min_lr=0.01,
             lr_decay_fn="1-sqrt", sched_on_updates=True),
        4,
    ),
    (
        "rsqrt-epochs-decay-prefix",
        dict(schedule="rsqrt", lr=0.1, epochs=6, warmup_epochs=1, warmup_prefix=True, decay_epochs=2,
             lr_stable_timescale=2.0),
        3,
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
        # timm's `decay_epochs` is the step schedule's interval and wsd's final decay (None: 0.2).
        decay_epochs=keys.get("decay_epochs") if kind in ("wsd", "rsqrt") else keys.get("step_epochs", 30),
        decay_fn=keys.get("lr_decay_fn"),
        stable_timescale=keys.get("lr_stable_timescale"),
        decay_milestones=keys.get("decay_milestones", [30, 60, 80]),
        cooldown_epochs=keys.get("cooldown_epochs", 0),
        # timm's `--decay-rate` is the step schedules' factor and the poly schedule's power.
        decay_rate=keys.get("poly_power", 1.0) if kind == "poly" else keys.get("step_gamma", 0.1),
        min_lr=keys.get("min_lr", 0.0),
        warmup_lr=keys.get("warmup_lr", 1e-5),
        warmup_epochs=keys.get("warmup_epochs", 0),
        warmup_prefix=keys.get("warmup_prefix", False),
        # train.py's defaults where our keys are unset.
        cycle_limit=keys.get("lr_cycle_limit", 1),
        cycle_mul=keys.get("lr_cycle_mul", 1.0),
        cycle_decay=keys.get("lr_cycle_decay", 0.5),
        k_decay=keys.get("lr_k_decay", 1.0),
        noise=keys.get("lr_noise"),
        noise_pct=keys.get("lr_noise_pct", 0.67),
        noise_std=keys.get("lr_noise_std", 1.0),
        noise_seed=keys.get("seed", 0),
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
