"""ONNX export of a resnet-train model file through PyTorch's TorchScript-based exporter
(`torch.onnx.export(..., dynamo=False)`), opset 18 by default, with the batch size and the image
height and width left dynamic: input `images` (N, 3, H, W) float32, normalised as the file's
`eval_preprocessing` says; output `logits` (N, classes). onnxruntime runs it with the model's
logits (tests/python_package.rs).

    python -m polycom_resnet.onnx MODEL.safetensors OUT.onnx [--weights ema] [--opset 18]
"""
import argparse

import torch

from .weights import load

OPSET = 18


def export_onnx(src, out, weights="model", opset=OPSET):
    """Writes the model in `src` as an ONNX graph to `out`; returns the opset."""
    model = load(src, weights=weights)
    size = (model.eval_preprocessing or {}).get("crop", 224)
    x = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        model, (x,), str(out), opset_version=opset, input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return opset


def main():
    ap = argparse.ArgumentParser(description="a resnet-train model file as ONNX")
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--weights", choices=["model", "ema"], default="model")
    ap.add_argument("--opset", type=int, default=OPSET)
    a = ap.parse_args()
    try:
        opset = export_onnx(a.src, a.out, a.weights, a.opset)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {a.out} (ONNX opset {opset})")


if __name__ == "__main__":
    main()
