"""Model registry: every classifier the stages can train, built by name.

Every model is a :class:`Classifier`: ``forward(x) == head(features(x))``, where ``features`` returns the
penultimate representation (B, D) that SSSL's neighbour search needs, and ``head`` is the final linear
layer, always registered as ``fc``. Shapes: x (B, c, H, W) float, features (B, D), logits (B, C).

Registered names (:data:`MODEL_NAMES`):
- ``small_cnn``: the CPU-profile network of docs/benchmarks.md (D = 128).
- ``preact_resnet18``: the PreAct ResNet-18 of the DivideMix code (docs/algorithms.md §2.3), D = 512.
- ``tv_resnet18``, ``tv_resnet50``: torchvision ResNets (D = 512, 2048), the web-scale backbones.

Weights come only from a local state-dict file (``pretrained_path``); nothing is ever downloaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Classifier(nn.Module):
    """Base class: a feature extractor followed by one linear head named ``fc``."""

    fc: nn.Linear

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features.

        Args:
            x: (B, c, H, W) float images.

        Returns:
            (B, D) features, the input of :meth:`head`.
        """
        raise NotImplementedError

    def head(self, features: Tensor) -> Tensor:
        """Logits (B, C) from features (B, D)."""
        return self.fc(features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, C) from images (B, c, H, W)."""
        return self.head(self.features(x))


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows subtracts the per-channel mean, so a bias would be a dead
    # parameter (zero gradient in training mode).
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class SmallCNN(Classifier):
    """Three conv blocks, global average pooling, one linear layer (docs/benchmarks.md, ``small_cnn``).

    Works for any input of at least 4×4 pixels (two 2× max-pools). 94,186 parameters at C = 10, c = 1.
    """

    def __init__(self, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(128, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, c, H, W) -> (B, 128)."""
        return self.body(x)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    out = conv2(relu(bn2(conv1(a)))) + shortcut, where a = relu(bn1(x)). The shortcut is x itself, or
    a 1×1 strided conv of ``a`` when the shape changes: projecting the pre-activated input keeps the
    projection on the normalised signal, as in the paper's full pre-activation unit.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride)."""
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + skip


class PreActResNet18(Classifier):
    """PreAct ResNet-18 as in the DivideMix code (Li et al., ICLR 2020).

    Stem conv3×3 (stride 1) + BN + ReLU, four stages of two :class:`PreActBlock` (widths 64/128/256/512,
    strides 1/2/2/2), then average pooling with no BN-ReLU before it, as published, and Linear(512, C).
    """

    def __init__(self, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages: list[nn.Module] = []
        in_ch = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(in_ch, width, stride), PreActBlock(width, width, 1)))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, c, H, W) -> (B, 512)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.pool(out).flatten(1)


_TV_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")


class TorchvisionResNet(Classifier):
    """A torchvision ResNet whose state-dict keys match torchvision's own (``conv1.weight`` ... ``fc.bias``).

    The first conv is rebuilt for ``in_channels != 3``; ``fc`` is replaced by Linear(D, C).
    """

    def __init__(self, net: nn.Module, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if in_channels != 3:
            old: nn.Conv2d = net.conv1
            conv1 = nn.Conv2d(
                in_channels,
                old.out_channels,
                old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                bias=False,
            )
            # Same init torchvision applies to every conv.
            nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
            net.conv1 = conv1
        # Re-register the children on self (rather than wrapping ``net``) so the keys stay torchvision's and
        # a torchvision checkpoint loads as is.
        for name in _TV_CHILDREN:
            setattr(self, name, getattr(net, name))
        self.fc = nn.Linear(net.fc.in_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, c, H, W) -> (B, D), D = 512 (ResNet-18) or 2048 (ResNet-50)."""
        for name in _TV_CHILDREN:
            x = getattr(self, name)(x)
        return x.flatten(1)


def _torchvision_resnet(arch: str, in_channels: int, num_classes: int) -> Classifier:
    # Imported here, not at the top: importing torchvision pulls in torch._dynamo (about 4 s on a 2-core
    # CPU), which the small_cnn and preact_resnet18 paths do not need.
    from torchvision import models

    net = getattr(models, arch)(weights=None)
    return TorchvisionResNet(net, num_classes=num_classes, in_channels=in_channels)


_Builder = Callable[[int, int], Classifier]

_REGISTRY: dict[str, _Builder] = {
    "small_cnn": lambda c, k: SmallCNN(num_classes=k, in_channels=c),
    "preact_resnet18": lambda c, k: PreActResNet18(num_classes=k, in_channels=c),
    "tv_resnet18": lambda c, k: _torchvision_resnet("resnet18", c, k),
    "tv_resnet50": lambda c, k: _torchvision_resnet("resnet50", c, k),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(
    name: str, *, num_classes: int, in_channels: int, pretrained_path: str | os.PathLike[str] | None = None
) -> Classifier:
    """Build a registered classifier, with fresh weights drawn from torch's global RNG.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: C, the number of logits.
        in_channels: c, image channels (1 for grayscale, 3 for RGB).
        pretrained_path: optional local state-dict file; see :func:`load_pretrained`.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ValueError: unknown name, or num_classes / in_channels below 1; a checkpoint that does not fit.
        FileNotFoundError: pretrained_path does not exist.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    model = _REGISTRY[name](in_channels, num_classes)
    if pretrained_path is not None:
        load_pretrained(model, pretrained_path)
    return model


_SHOWN = 12  # problems named in a load error; the rest are counted


def load_pretrained(model: Classifier, path: str | os.PathLike[str]) -> None:
    """Load a local state dict into ``model`` in place, keeping the fresh head if the file's differs.

    Every backbone tensor must be present with the right shape; the head (``fc.*``) is loaded only when
    the file has it with the same shape, so torchvision's ImageNet file (1000-class ``fc``) fits a C-class
    model: its head is left out, which one line on stderr says. BatchNorm ``num_batches_tracked``
    counters may be absent (files saved before torch 0.4.1 have none; they only count batches).

    Args:
        model: a model from :func:`build_model`.
        path: file written by ``torch.save(model.state_dict(), path)``; read with ``weights_only=True``.

    Raises:
        FileNotFoundError: path does not exist.
        ValueError: the file is not a state dict, or backbone keys are missing, extra or misshapen (named).
    """
    name = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {name}")
    state = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(state, dict):
        raise ValueError(f"{name}: expected a state dict, got {type(state).__name__}")
    own = model.state_dict()
    head = {k: v for k, v in state.items() if k.startswith("fc.")}
    new_head = any(k in own and v.shape != own[k].shape for k, v in head.items()) or not head
    keep = {k: v for k, v in state.items() if not (new_head and k.startswith("fc."))}
    optional = [k for k in own if k.endswith(".num_batches_tracked") or (new_head and k.startswith("fc."))]
    missing = [f"missing {k}" for k in own if k not in keep and k not in optional]
    misshapen = [
        f"shape of {k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in keep.items()
        if k in own and v.shape != own[k].shape
    ]
    unexpected = [f"unexpected {k}" for k in keep if k not in own]
    if problems := missing + misshapen + unexpected:
        counts = f"{len(missing)} missing, {len(misshapen)} misshapen, {len(unexpected)} unexpected keys"
        shown = problems[:_SHOWN] + ([f"... {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else [])
        hint = ""
        if any(k.startswith("module.") for k in keep):
            hint = " (saved from a DataParallel/DDP wrapper? strip the 'module.' prefix of its keys)"
        raise ValueError(f"{name} does not fit the model ({counts}): " + "; ".join(shown) + hint)
    model.load_state_dict(keep, strict=False)
    if new_head:
        was = f"its {head['fc.weight'].shape[0]}-class head" if "fc.weight" in head else "it has no head"
        print(
            f"pretrained weights {name}: backbone loaded; {was} is replaced by a fresh "
            f"{model.fc.out_features}-class fc",
            file=sys.stderr,
            flush=True,
        )
