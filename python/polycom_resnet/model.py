"""A torchvision ResNet (v1.5) with one activation module per site, as resnet-train builds it
(src/model/resnet.rs): `act1` after the stem's BN, and `act1`, `act2`, `act3` in a bottleneck
(`act1`, `act2` in a basic block), the last after the residual add. Parameter names are
torchvision's plus the activations' (`layer1.0.act3.weight`), so a ReLU model is a torchvision
state_dict and loads strictly either way. Options that change the network as resnet-train's do:
`small_stem` (3x3 stride-1 stem, no max-pool), `blurpool` (FFCV's [1 2 1] x [1 2 1] / 16
depthwise blur before each convolution with stride > 1 and at least 16 input channels; a constant,
not a parameter) and `bn_eps`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .activations import make_act

LAYERS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


class BlurConv2d(nn.Conv2d):
    """A convolution whose input is blurred first (FFCV's BlurPool); same parameters and names."""

    def forward(self, x):
        taps = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        blur = (torch.outer(taps, taps) / 16.0).to(x.dtype).expand(x.shape[1], 1, 3, 3)
        return super().forward(F.conv2d(x, blur, None, 1, 1, 1, x.shape[1]))


def _blurred(conv):
    if conv.stride[0] > 1 and conv.in_channels >= 16:
        conv.__class__ = BlurConv2d
    return conv


def _bottleneck_forward(self, x):
    idt = x if self.downsample is None else self.downsample(x)
    out = self.act1(self.bn1(self.conv1(x)))
    out = self.act2(self.bn2(self.conv2(out)))
    return self.act3(self.bn3(self.conv3(out)) + idt)


def _basic_forward(self, x):
    idt = x if self.downsample is None else self.downsample(x)
    out = self.act1(self.bn1(self.conv1(x)))
    return self.act2(self.bn2(self.conv2(out)) + idt)


class PolyResNet(ResNet):
    """`PolyResNet(arch, act, num_classes)` with `act` resnet-train's activation config, e.g.
    {"kind": "polynorm", "order": 3, "axis": "channel"}."""

    def __init__(self, arch="resnet50", act=None, num_classes=1000, small_stem=False, blurpool=False, bn_eps=None):
        if arch not in LAYERS:
            raise ValueError(f"unknown arch {arch!r} ({', '.join(LAYERS)})")
        act = act or {"kind": "relu"}
        block, layers = LAYERS[arch]
        super().__init__(block, layers, num_classes=num_classes)
        self.arch, self.act, self.small_stem = arch, act, small_stem
        del self.relu
        self.act1 = make_act(act)
        if small_stem:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in layer:
                del blk.relu
                sites = 3 if isinstance(blk, Bottleneck) else 2
                for i in range(1, sites + 1):
                    setattr(blk, f"act{i}", make_act(act))
                blk.forward = (_bottleneck_forward if sites == 3 else _basic_forward).__get__(blk)
                if blurpool:
                    _blurred(blk.conv2 if sites == 3 else blk.conv1)
                    if blk.downsample is not None:
                        _blurred(blk.downsample[0])
        if blurpool:
            _blurred(self.conv1)
        if bn_eps is not None:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eps = bn_eps

    def _forward_impl(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        if not self.small_stem:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
