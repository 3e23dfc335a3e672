"""PolyReLU and PolyNorm (PolyCom, ICLR 2025) as torch modules, with resnet-train's semantics, and
resnet-train's weight files (safetensors with the model in their metadata) as torchvision ResNets.

    import polycom_resnet
    model = polycom_resnet.load("runs/NAME/best.safetensors")    # eval mode, strictly loaded
    logits = model(images)                                        # NCHW, normalised as the metadata says

    polycom_resnet.save_torchvision(torchvision.models.resnet50(weights="DEFAULT"), "tv50.safetensors")
"""
from .activations import PolyNorm, PolyReLU, make_act
from .model import PolyResNet
from .weights import load, read_metadata, save, save_torchvision

__all__ = ["PolyNorm", "PolyReLU", "make_act", "PolyResNet", "load", "read_metadata", "save", "save_torchvision"]
