"""resnet-train's weight files: safetensors (float32) under torchvision's names plus the activation
sites' (`act1.weight`, `layer1.0.act3.bias`), the model config as JSON in the metadata key
`resnet_train.model`, optionally the class names (`resnet_train.class_names`), the eval
preprocessing (`resnet_train.eval`) and a CRC-32 per tensor (`tensor_crc32`). Training checkpoints
add their training state under `train_state.` (the EMA weights under `train_state.ema.`).
"""
import json
import zlib

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .model import LAYERS, PolyResNet

META_MODEL = "resnet_train.model"
META_CLASSES = "resnet_train.class_names"
META_EVAL = "resnet_train.eval"
META_CRC = "tensor_crc32"
TRAIN_STATE = "train_state."


def read_metadata(path):
    """The file's metadata (a dict of strings); ValueError if it is not a safetensors file."""
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a safetensors file ({e})") from None


def _config(path, meta):
    if META_MODEL not in meta:
        raise ValueError(f"{path}: no {META_MODEL} metadata: not a resnet-train weights file (save_torchvision makes one)")
    try:
        cfg = json.loads(meta[META_MODEL])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: {META_MODEL} is not JSON ({e})") from None
    for key in ("arch", "act", "num_classes"):
        if key not in cfg:
            raise ValueError(f"{path}: {META_MODEL} has no {key!r}")
    if cfg["arch"] not in LAYERS:
        raise ValueError(f"{path}: unknown arch {cfg['arch']!r}")
    return cfg


def load(path, weights="model", device="cpu"):
    """The model in `path` (a weights file, or a training checkpoint: `weights="ema"` takes its EMA
    weights) as a `PolyResNet`, strictly loaded, in eval mode. The file's class names and eval
    preprocessing are attributes `class_names` and `eval_preprocessing` (None when not recorded)."""
    meta = read_metadata(path)
    cfg = _config(path, meta)
    crcs = json.loads(meta[META_CRC]) if META_CRC in meta else {}
    prefix = TRAIN_STATE + "ema." if weights == "ema" else ""
    state = {}
    with safe_open(str(path), "pt", device="cpu") as f:
        for key in f.keys():
            if weights != "ema" and key.startswith(TRAIN_STATE):
                continue
            if not key.startswith(prefix) or key == prefix + "updates":
                continue
            t = f.get_tensor(key)
            if key in crcs and f"{zlib.crc32(t.contiguous().view(torch.uint8).numpy().tobytes()):08x}" != crcs[key]:
                raise ValueError(f"{path}: damaged: tensor {key} differs from the checksum recorded when it was written")
            state[key[len(prefix):]] = t
    if not state:
        raise ValueError(f"{path}: holds no {'EMA ' if weights == 'ema' else ''}weights")
    model = PolyResNet(
        cfg["arch"], cfg["act"], cfg["num_classes"], small_stem=cfg.get("small_stem", False),
        blurpool=cfg.get("blurpool", False), bn_eps=cfg.get("bn_eps"),
    )
    # torchvision's BNs count batches; resnet-train's files do not carry the count.
    for name, buf in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state.setdefault(name, torch.zeros_like(buf))
    model.load_state_dict(state, strict=True)
    model.class_names = json.loads(meta[META_CLASSES]) if META_CLASSES in meta else None
    model.eval_preprocessing = json.loads(meta[META_EVAL]) if META_EVAL in meta else None
    return model.to(device).eval()


def _write(path, state, cfg, class_names=None, eval_preprocessing=None):
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()
               if not k.endswith("num_batches_tracked")}
    crcs = {k: f"{zlib.crc32(t.view(torch.uint8).numpy().tobytes()):08x}" for k, t in tensors.items()}
    meta = {META_MODEL: json.dumps(cfg), META_CRC: json.dumps(crcs, sort_keys=True), "format": "pt"}
    if class_names is not None:
        meta[META_CLASSES] = json.dumps(list(class_names))
    if eval_preprocessing is not None:
        meta[META_EVAL] = json.dumps(eval_preprocessing)
    save_file(tensors, str(path), metadata=meta)


def save(model, path, class_names=None, eval_preprocessing=None):
    """Writes a `PolyResNet` as a resnet-train weights file (`resnet-train eval`, `predict` and
    `--init-from`-style loading read it)."""
    cfg = {"arch": model.arch, "act": model.act, "num_classes": model.fc.out_features,
           "small_stem": model.small_stem}
    _write(path, model.state_dict(), cfg, class_names, eval_preprocessing)


def _arch_of(state):
    blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    for name, (block, layers) in LAYERS.items():
        if layers == blocks and (block.__name__ == "Bottleneck") == bottleneck:
            return name
    raise ValueError(f"not a torchvision/timm ResNet-18..152 state_dict (blocks per stage {blocks})")


def save_torchvision(model_or_state_dict, path, class_names=None):
    """Writes a torchvision or timm ResNet (v1.5, 18 to 152; a model or its state_dict) as a
    resnet-train weights file with ReLU activations, to evaluate or fine-tune with resnet-train."""
    state = model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
    arch = _arch_of(state)
    cfg = {"arch": arch, "act": {"kind": "relu", "order": 3}, "num_classes": state["fc.weight"].shape[0],
           "small_stem": False}
    probe = PolyResNet(arch, num_classes=cfg["num_classes"])
    probe.load_state_dict(state, strict=True)
    _write(path, state, cfg, class_names)
