"""ResNet-18/34/50/101/152 with torchvision's parameter names, so ImageNet weights load from torchvision's files.

torchvision does not import with the CPU torch build here, so the network is written out; the module tree and
every parameter and buffer name match ``torchvision.models.resnet`` (``conv1``, ``bn1``, ``layer1``..``layer4``,
each block's ``conv1``/``bn1``/..., ``downsample.0``/``downsample.1``, ``fc``). `load_imagenet_weights` reads a
torchvision state-dict file (``resnet50-0676ba61.pth`` or any ``torch.save(model.state_dict())``) with
``weights_only=True``: no code in the file is run.

Input (B, 3, H, W) ImageNet-normalised RGB; any H, W ≥ 32 (global average pooling, as torchvision's
``AdaptiveAvgPool2d``; SPIN's ``AvgPool2d(7)`` equals it at 224 px). `ResNet.features` gives (B, 512·expansion).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from core.errors import FitloopError
from training.checkpoint import read_torch_file

# depth -> (block, blocks per stage): torchvision's table
ARCHITECTURES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                 101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


class WeightsFileError(FitloopError):
    """A weights file cannot be read, or does not fit the network."""


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3×3 convolution."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet (names and structure). ``num_classes=None`` leaves out ``fc`` (a feature extractor).

    Initialisation as SPIN's HMR: He-normal convolutions (fan-out), BatchNorm weight 1 and bias 0.
    """

    def __init__(self, depth: int = 50, num_classes: int | None = 1000):
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        kind, layers = ARCHITECTURES[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = 512 * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type, width: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != width * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, width * block.expansion, stride),
                                       nn.BatchNorm2d(width * block.expansion))
        layers = [block(self.inplanes, width, stride, downsample)]
        self.inplanes = width * block.expansion
        layers += [block(self.inplanes, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def feature_map(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised RGB -> (B, feature_dim, ⌈H/32⌉, ⌈W/32⌉) the last stage's map (stride 32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, feature_map: Tensor) -> Tensor:
        """(B, feature_dim, h, w) -> (B, feature_dim): global average pooling."""
        return torch.flatten(self.avgpool(feature_map), 1)

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised RGB -> (B, feature_dim) globally pooled features."""
        return self.pool(self.feature_map(x))

    def forward(self, x: Tensor) -> Tensor:
        feats = self.features(x)
        return feats if self.fc is None else self.fc(feats)


def backbone_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the ResNet trunk of ``model`` (no ``fc``, nothing a subclass adds)."""
    trunk = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    return [k for k in model.state_dict() if k.startswith(trunk)]


def load_imagenet_weights(model: ResNet, path: str | Path) -> dict[str, list[str]]:
    """Load torchvision ImageNet weights from a state-dict file into the trunk of ``model`` (a `ResNet` or a
    subclass such as the regressor). Every trunk tensor must be in the file with the same shape; ``fc`` and keys
    the trunk lacks are skipped and reported. Returns ``{"loaded": [...], "skipped": [...]}``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such weights file (torchvision's resnet*.pth state dict)")
    state = read_torch_file(path, "a state-dict file (torchvision's resnet*.pth)", WeightsFileError)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    wanted = backbone_keys(model)
    missing = [k for k in wanted if k not in state]
    if missing:
        raise WeightsFileError(f"{path}: {len(missing)} trunk tensors missing (e.g. {missing[:3]}); is it a "
                               f"ResNet-{getattr(model, 'depth', '?')} state dict?")
    wrong = [k for k in wanted if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise WeightsFileError(f"{path}: shapes differ for {wrong[:3]} (file {tuple(state[wrong[0]].shape)}, "
                               f"network {tuple(own[wrong[0]].shape)}): another ResNet depth?")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return {"loaded": wanted, "skipped": sorted(set(state) - set(wanted))}
