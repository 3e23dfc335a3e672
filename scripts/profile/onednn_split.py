#!/usr/bin/env python3
"""Split a CPU training step's time into oneDNN's primitives and everything else.

Runs one `bench` command (ours, or ../shared/bench/torch_train_bench.py) with ONEDNN_VERBOSE=1,
which makes oneDNN print one line per primitive execution with its wall time, and prints one JSON
line: the command's own ms_per_step, the oneDNN milliseconds per timed step by primitive kind
(convolution forward / backward data / backward weights, reorder, matmul) and the rest of the
step (ms_per_step - oneDNN). On the CPU both resnet-train and PyTorch (eager or torch.compile)
run their convolutions through the same oneDNN build of libtorch, so the oneDNN share is the
same work on both sides and the rest is what each implementation controls: activations, batch
norm, casts, residual adds, pooling, optimizer, autograd and allocator.

Both benches run WARMUP untimed steps and then STEPS timed ones, each step executing the same
primitives, so the timed steps are the last STEPS/(WARMUP+STEPS) of the execution lines.

  python3 scripts/profile/onednn_split.py -- target/release/resnet-train bench --json --steps 10 --warmup 3 ...
  python3 scripts/profile/onednn_split.py -- python ../shared/bench/torch_train_bench.py --steps 10 --warmup 3 ...
"""
import json
import os
import subprocess
import sys


def flag(argv, name, default):
    if name in argv:
        return int(argv[argv.index(name) + 1])
    return default


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: onednn_split.py -- COMMAND ... (a bench command with --steps and --warmup)")
    steps, warmup = flag(argv, "--steps", 10), flag(argv, "--warmup", 3)
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    run = subprocess.run(argv, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-4000:])
        sys.exit(f"onednn_split: {argv[0]} exited with {run.returncode}")
    execs, result = [], None
    for line in run.stdout.splitlines():
        if line.startswith("onednn_verbose,"):
            p = line.split(",")
            if len(p) > 8 and p[2] == "primitive" and p[3] == "exec":
                kind = p[5] if p[5] != "convolution" else "convolution " + p[7]
                execs.append((kind, float(p[-1])))
        elif line.startswith("{"):
            result = json.loads(line)
    if result is None or not execs:
        sys.exit("onednn_split: no JSON result or no oneDNN execution lines in the output")
    total_steps = steps + warmup
    if len(execs) % total_steps:
        sys.exit(f"onednn_split: {len(execs)} primitive executions do not divide into {total_steps} equal steps")
    timed = execs[len(execs) - len(execs) // total_steps * steps:]
    by_kind = {}
    for kind, ms in timed:
        by_kind[kind] = by_kind.get(kind, 0.0) + ms / steps
    onednn = sum(by_kind.values())
    step = float(result["ms_per_step"])
    print(json.dumps({
        "impl": result.get("impl"), "act": result.get("act"),
        "channels_last": result.get("channels_last"), "ms_per_step": round(step, 1),
        "onednn_ms": round(onednn, 1), "rest_ms": round(step - onednn, 1),
        "onednn_execs_per_step": len(execs) // total_steps,
        "by_kind_ms": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
    }))


if __name__ == "__main__":
    main()
