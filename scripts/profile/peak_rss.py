"""Runs a command that prints one JSON line and adds the command's peak RSS to it (for
same-measure memory comparisons of resnet-train bench and ../shared/bench/torch_train_bench.py).

  python scripts/profile/peak_rss.py CMD ARGS...
"""
import json
import resource
import subprocess
import sys

out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout
line = [l for l in out.splitlines() if l.startswith("{")][-1]
row = json.loads(line)
row["child_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3)
print(json.dumps(row))
