"""PolyReLU and PolyNorm with resnet-train's semantics (src/model/activation.rs):

    PolyReLU_k(x) = sum_{i=1..k} w[i-1] * relu(x)^i + b
    PolyNorm_k(x) = sum_{i=1..k} w[i-1] * rms(x^i) + b,  rms(y) = y * rsqrt(mean(y^2) + 1e-6)

the mean over the channel axis (dim 1: per pixel; `axis="layer"`: dims 1.. per sample; a 2-d
input: dim 1 either way). Each site owns its k weights (init 1/k, or [1, 0, ...] for "relu-like")
and one bias (0). `clamp` clamps the input to [-clamp, clamp] first (a stability remedy);
`fp32` computes in float32 for float16/bfloat16 inputs (what CUDA autocast does with these ops),
returning float32 unless `out_lowp`.
"""
import torch
import torch.nn as nn

EPS = 1e-6


def _widen(x, fp32):
    low = x.dtype in (torch.float16, torch.bfloat16)
    return (x.float(), x.dtype) if fp32 and low else (x, None)


class _PolyCom(nn.Module):
    def __init__(self, order=3, init="paper", clamp=None, fp32=True, out_lowp=False):
        super().__init__()
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        self.order, self.clamp, self.fp32, self.out_lowp = order, clamp, fp32, out_lowp
        w = torch.ones(order) / order if init == "paper" else torch.eye(1, order).flatten()
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        x, low = _widen(x, self.fp32)
        if self.clamp is not None:
            x = x.clamp(-self.clamp, self.clamp)
        y = self.poly(x)
        return y.to(low) if low is not None and self.out_lowp else y

    def extra_repr(self):
        return f"order={self.order}" + (f", clamp={self.clamp}" if self.clamp is not None else "")


class PolyReLU(_PolyCom):
    def poly(self, x):
        r = torch.relu(x)
        power, acc = r, r * self.weight[0]
        for i in range(1, self.order):
            power = power * r
            acc = acc + power * self.weight[i]
        return acc + self.bias


class PolyNorm(_PolyCom):
    def __init__(self, order=3, axis="channel", **kw):
        super().__init__(order, **kw)
        if axis not in ("channel", "layer"):
            raise ValueError(f"axis must be channel or layer, got {axis!r}")
        self.axis = axis

    def poly(self, x):
        dims = (1,) if self.axis == "channel" or x.dim() == 2 else tuple(range(1, x.dim()))
        power, acc = x, None
        for i in range(self.order):
            if i > 0:
                power = power * x
            term = power * torch.rsqrt(power.square().mean(dim=dims, keepdim=True) + EPS) * self.weight[i]
            acc = term if acc is None else acc + term
        return acc + self.bias

    def extra_repr(self):
        return super().extra_repr() + f", axis={self.axis}"


def make_act(act):
    """The activation module a site gets for resnet-train's activation config (a dict: kind,
    order, axis, init, clamp, fp32, out_lowp)."""
    kind = act["kind"]
    if kind == "relu":
        return nn.ReLU()
    kw = dict(order=act.get("order", 3), init=act.get("init", "paper").replace("_", "-"),
              clamp=act.get("clamp"), fp32=act.get("fp32", True), out_lowp=act.get("out_lowp", False))
    kw["init"] = "paper" if kw["init"] == "paper" else "relu-like"
    if kind == "polyrelu":
        return PolyReLU(**kw)
    if kind == "polynorm":
        return PolyNorm(axis=act.get("axis", "channel"), **kw)
    raise ValueError(f"unknown activation {kind!r} (relu, polyrelu, polynorm)")
