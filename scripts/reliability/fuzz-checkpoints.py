"""Mutated checkpoints through the binary: `predict --checkpoint` (a model file) or `--resume` (a run
folder's last.safetensors, one step). Exit codes 0/1/2 are fine; anything else (a panic's 101, a
signal, a hang) is kept as /tmp/fuzz/bad-N.safetensors and counted.

  python3 scripts/reliability/fuzz-checkpoints.py MODEL.safetensors predict 300 IMAGE.jpg [SEED]
  python3 scripts/reliability/fuzz-checkpoints.py RUN/last.safetensors resume 150 RUN [SEED]
(BIN=path: the binary; default target/release/resnet-train)
"""
import json, os, random, struct, subprocess, sys, collections
B = os.environ.get("BIN", "target/release/resnet-train")
os.makedirs("/tmp/fuzz", exist_ok=True)
src = sys.argv[1]; mode = sys.argv[2]; n = int(sys.argv[3])
img = sys.argv[4]
data = open(src, "rb").read()
hlen = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8+hlen])
rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else 0)
def mutate():
    r = rng.random()
    b = bytearray(data)
    if r < 0.25:  # random byte edits in the header
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(0, 8 + hlen); b[i] = rng.randrange(256)
        return bytes(b), "header-bytes"
    if r < 0.4:  # truncation
        return bytes(b[:rng.randrange(0, len(b))]), "truncate"
    if r < 0.5:  # header length field
        v = rng.choice([0, 1, hlen - 1, hlen + 1, 2**63, 2**64 - 1, len(b), len(b) + 100, rng.randrange(2**40)])
        return struct.pack("<Q", v) + bytes(b[8:]), "hlen"
    # structured JSON edits
    h = json.loads(json.dumps(header))
    names = [k for k in h if k != "__metadata__"]
    k = rng.choice(names); t = h[k]
    what = rng.choice(["shape", "dtype", "offsets", "drop", "meta", "swap"])
    if what == "shape":
        t["shape"] = rng.choice([[], [0], [2**40], [-1], [1, 2**33, 2**33], t["shape"][::-1], t["shape"] + [1], [3.5]])
    elif what == "dtype":
        t["dtype"] = rng.choice(["F16", "BF16", "I64", "U8", "BOOL", "F64", "X9", "", 5])
    elif what == "offsets":
        s, e = t["data_offsets"]
        t["data_offsets"] = rng.choice([[e, s], [s, e + 4], [s, 2**62], [-4, e], [s], [s, e, 1], [0, 0]])
    elif what == "drop":
        del h[k]
    elif what == "meta":
        m = h.get("__metadata__", {})
        if m:
            mk = rng.choice(list(m)); m[mk] = rng.choice(["", "nan", "-1", "1e300", "{", "[]", "x" * 1000, "0"])
        h["__metadata__"] = m
    else:
        k2 = rng.choice(names); h[k], h[k2] = h[k2], h[k]
    hb = json.dumps(h).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return struct.pack("<Q", len(hb)) + hb + data[8+hlen:], "json-" + what
stats = collections.Counter(); bad = []
import shutil
path = "/tmp/fuzz/case.safetensors"
if mode == "resume":
    path = "/tmp/fuzz/rundir/last.safetensors"
for i in range(n):
    blob, kind = mutate()
    if mode == "resume":
        shutil.rmtree("/tmp/fuzz/rundir", ignore_errors=True)
        shutil.copytree(img, "/tmp/fuzz/rundir", ignore=shutil.ignore_patterns("*.safetensors", "tb"))
    open(path, "wb").write(blob)
    if mode == "resume":
        cmd = [B, "--resume", "/tmp/fuzz/rundir", "--max-steps", "1"]
    elif mode == "predict":
        cmd = [B, "predict", "--checkpoint", path, img]
    else:
        cmd = [B, "eval", "--checkpoint", path, "--data", img, "--size", "32", "--device", "cpu"]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=60, env=dict(os.environ, RUST_BACKTRACE="0"))
        rc = p.returncode; err = (p.stderr + p.stdout).decode(errors="replace")
    except subprocess.TimeoutExpired:
        rc, err = "timeout", ""
    stats[(kind, rc)] += 1
    if rc not in (0, 1, 2):
        bad.append((i, kind, rc, err[-600:]))
        open(f"/tmp/fuzz/bad-{i}.safetensors", "wb").write(blob)
for k, v in sorted(stats.items(), key=str): print(k, v)
for b in bad[:10]: print("BAD", b)
print("bad:", len(bad))
