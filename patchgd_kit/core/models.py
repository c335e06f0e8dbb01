"""Backbones and heads: GD, GD-extended and PatchGD around torchvision's ResNet50 and MobileNetV2.

A backbone is one entry of ``BACKBONES`` (constructor, trunk, channels, stride, classifier); a
method's model is built by ``methods.build_model``.

- GD: the torchvision model with its classifier set to the number of classes.
- PatchGD: f_θ1 = backbone → global pool → Linear(features → s = 256), one patch → one latent vector;
  g_θ2 = the head below on the Z block (B, s, m, n).
- GD-extended: the backbone's last feature map → 1×1 projection to 256 channels → the same head, to
  rule out the head's extra parameters as the reason PatchGD wins. The paper (§4.2, Appendix C) says
  only "extended with a similar head"; the 1×1 projection is the kit's reading: the smallest layer
  that gives the head the 256-channel input it has in PatchGD.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from .patches import grid_shape
from ..errors import KitError

LATENT_DIM = 256  # s: the official code's latent size


@dataclass(frozen=True)
class Backbone:
    """A torchvision backbone as the kit uses it: one entry of BACKBONES per backbone."""
    name: str
    constructor: Callable[..., nn.Module]            # torchvision's, e.g. tvm.resnet50
    classifier_prefix: str                           # state-dict prefix of the classifier every method replaces
    trunk: Callable[[nn.Module], nn.Module]          # torchvision model → convolutional trunk (image → map)
    channels: Callable[[nn.Module], int]             # channels of the trunk's last feature map
    set_classifier: Callable[[nn.Module, int], None]  # replace the classifier by a Linear to n outputs
    patch_encoder: Callable[[nn.Module, int], nn.Module]  # torchvision model → f_θ1 (patch → s)
    encoder_trunk: Callable[[nn.Module], nn.Module]  # f_θ1's net → the trunk inside it
    stages: Callable[[nn.Module], list[nn.Sequential]]  # torchvision model → the trunk's sequential stages
    stride: int = 32                                 # image side / feature map side (rounded up)


def _resnet_classifier(model: nn.Module, out_features: int) -> None:
    model.fc = nn.Linear(model.fc.in_features, out_features)


def _resnet_encoder(model: nn.Module, latent_dim: int) -> nn.Module:
    _resnet_classifier(model, latent_dim)  # the official code: fc → Linear(2048, 256)
    return model


def _resnet_trunk(model: nn.Module) -> nn.Module:
    return nn.Sequential(*list(model.children())[:-2])  # everything before avgpool and fc


def _mobilenet_classifier(model: nn.Module, out_features: int) -> None:
    model.classifier[-1] = nn.Linear(model.last_channel, out_features)


def _mobilenet_encoder(model: nn.Module, latent_dim: int) -> nn.Module:
    # MobileNetV2's classifier is Dropout + Linear; the paper has no MobileNetV2 code, so the patch
    # encoder mirrors ResNet50's: pooled features → Linear(1280, 256).
    return nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(model.last_channel,
                                                                                          latent_dim))


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("resnet50", tvm.resnet50, "fc.", _resnet_trunk, lambda m: m.fc.in_features, _resnet_classifier,
             _resnet_encoder, encoder_trunk=_resnet_trunk,
             stages=lambda m: [m.layer1, m.layer2, m.layer3, m.layer4]),
    Backbone("mobilenet_v2", tvm.mobilenet_v2, "classifier.", lambda m: m.features, lambda m: m.last_channel,
             _mobilenet_classifier, _mobilenet_encoder, encoder_trunk=lambda net: net[0],
             stages=lambda m: [m.features]),
)}


def backbone_of(name: str) -> Backbone:
    if name not in BACKBONES:
        raise KitError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def torchvision_model(backbone: str, weights: str | None = None) -> nn.Module:
    """A torchvision classifier. `weights`: None (random init), "imagenet" (torchvision's download,
    needs a network), or the path of a local state-dict file of the ImageNet model."""
    ctor = backbone_of(backbone).constructor
    if weights in (None, "none"):
        return ctor(weights=None)
    if weights == "imagenet":
        try:
            return ctor(weights="DEFAULT")
        except OSError as e:  # no network, or no space for the download
            raise KitError(f"weights 'imagenet' could not be downloaded ({e}); use a local state-dict file "
                           "(--weights FILE, e.g. from `pretrain`) or none") from e
    path = Path(weights)
    if not path.is_file():
        raise KitError(f"weights {weights!r} is neither 'none', 'imagenet' nor an existing file")
    model = ctor(weights=None)
    load_trunk(model, backbone, path)
    return model


def load_trunk(model: nn.Module, backbone: str, path: Path) -> None:
    """Load a state-dict file into a torchvision `backbone`: a whole model's (ImageNet's) or a trunk's
    (`patchgd_kit pretrain` writes {"state_dict": trunk, ...}); only the classifier may be absent."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise KitError(f"weights file {path} is not a readable torch state dict ({type(e).__name__}); "
                       "allowed: a file from `python -m patchgd_kit pretrain` or a torchvision state dict") from e
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KitError(f"weights file {path} holds no state dict of tensors")
    own = model.state_dict()
    prefix = backbone_of(backbone).classifier_prefix
    missing = [k for k in own if k not in state and not k.startswith(prefix)]
    unexpected = [k for k in state if k not in own]
    misshapen = [k for k in state if k in own and state[k].shape != own[k].shape and not k.startswith(prefix)]
    if missing or unexpected or misshapen:
        kinds = {"missing": missing, "unexpected": unexpected, "misshapen": misshapen}
        examples = "; ".join(f"{kind}: {', '.join(keys[:3])}{', …' if len(keys) > 3 else ''}"
                             for kind, keys in kinds.items() if keys)
        raise KitError(f"weights file {path} does not fit torchvision's {backbone}: "
                       + ", ".join(f"{len(keys)} {kind}" for kind, keys in kinds.items())
                       + f" keys ({examples}); allowed: a state dict of that backbone")
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)
                           or v.shape == own[k].shape}, strict=False)


class PatchEncoder(nn.Module):
    """f_θ1: one patch (C, p, p) → one latent vector of size s."""

    def __init__(self, backbone: str, latent_dim: int = LATENT_DIM, weights: str | None = None):
        super().__init__()
        self.spec = backbone_of(backbone)
        self.net = self.spec.patch_encoder(torchvision_model(backbone, weights), latent_dim)
        self.latent_dim = latent_dim

    @property
    def trunk(self) -> nn.Module:
        """The torchvision trunk inside f_θ1: what a weights file initialises (not the Linear to s)."""
        return self.spec.encoder_trunk(self.net)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches)


class ZHead(nn.Module):
    """g_θ2 (the official "original" head): Conv3×3 s1, then 3 × Conv3×3 s2, each followed by ReLU,
    BatchNorm and Dropout2d(0.2); flatten; Linear to the classes. The Linear's input depends on the
    grid: each stride-2 conv maps a side m to ceil(m / 2)."""

    def __init__(self, in_channels: int, grid: tuple[int, int], num_classes: int, width: int = LATENT_DIM):
        super().__init__()
        layers, channels = [], in_channels
        for stride in (1, 2, 2, 2):
            layers += [nn.Conv2d(channels, width, 3, stride, 1), nn.ReLU(inplace=True),
                       nn.BatchNorm2d(width), nn.Dropout2d(0.2)]
            channels = width
        self.convs = nn.Sequential(*layers)
        m, n = grid
        for _ in range(3):
            m, n = (m + 1) // 2, (n + 1) // 2
        self.fc = nn.Linear(width * m * n, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(z).flatten(1))


class PatchGDModel(nn.Module):
    """f_θ1 (`.backbone`, patch → latent vector) and g_θ2 (`.head`, Z → logits)."""

    def __init__(self, backbone: str, num_classes: int, image_size: int, patch_size: int,
                 latent_dim: int = LATENT_DIM, weights: str | None = None):
        super().__init__()
        self.patch_size = patch_size
        self.grid = grid_shape(image_size, patch_size)
        self.backbone = PatchEncoder(backbone, latent_dim, weights)
        self.head = ZHead(latent_dim, self.grid, num_classes)


class GDExtended(nn.Module):
    """Backbone feature map → 1×1 projection to 256 → the PatchGD head on that map."""

    def __init__(self, backbone: str, num_classes: int, image_size: int, weights: str | None = None):
        super().__init__()
        spec = backbone_of(backbone)
        model = torchvision_model(backbone, weights)
        self.features = spec.trunk(model)
        self.project = nn.Conv2d(spec.channels(model), LATENT_DIM, 1)
        side = -(-image_size // spec.stride)  # the trunk downsamples by its stride, rounding up
        self.head = ZHead(LATENT_DIM, (side, side), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.project(self.features(images)))


def classifier_model(backbone: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """GD's model: the torchvision classifier with its last layer set to the classes."""
    model = torchvision_model(backbone, weights)
    backbone_of(backbone).set_classifier(model, num_classes)
    return model


def trunk_of(model: nn.Module, backbone: str) -> nn.Module:
    """The pretrained convolutional trunk inside a model built by `methods.build_model`: the part that
    `weights` initialises. Everything else (classifier, f_θ1's Linear to s, projection, head) is new."""
    if isinstance(model, PatchGDModel):
        return model.backbone.trunk
    if isinstance(model, GDExtended):
        return model.features
    if hasattr(model, "streamed"):  # streaming.StreamingClassifier: its trunk runs in tiles
        return model.trunk
    return backbone_of(backbone).trunk(model)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
