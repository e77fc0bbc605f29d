"""IResNet teachers (improved ResNets, the ArcFace backbones) for knowledge distillation.

The module names and tensor shapes follow insightface's `arcface_torch` IResNet definitions, so a
published IResNet ArcFace checkpoint (a plain state dict) loads with `load_state_dict` unchanged.
Each residual block is pre-activation style: BatchNorm, 3x3 convolution, BatchNorm, PReLU, 3x3
convolution (strided in the first block of a stage), BatchNorm, plus the shortcut. Every stage
halves the feature map, so a 112x112 input ends at 7x7 before the embedding layer.
"""

from __future__ import annotations

import torch
from torch import nn

#: Residual blocks per stage for each depth.
IRESNET_STAGES: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}

#: Architecture names accepted by `build_iresnet`, such as "iresnet100".
IRESNET_ARCHS = tuple(f"iresnet{depth}" for depth in IRESNET_STAGES)

_STAGE_WIDTHS = (64, 128, 256, 512)
_BN_EPS = 1e-5


class IBasicBlock(nn.Module):
    """Residual block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, plus the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=_BN_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=_BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _make_stage(in_channels: int, width: int, blocks: int) -> nn.Sequential:
    """Stack `blocks` residual blocks; the first one halves the feature map."""
    first = IBasicBlock(in_channels, width, stride=2)
    return nn.Sequential(first, *(IBasicBlock(width, width, stride=1) for _ in range(blocks - 1)))


class IResNet(nn.Module):
    """IResNet embedding network for 112x112 faces.

    The last BatchNorm (`features`) keeps its scale fixed at 1, as in the ArcFace training
    recipe. The scale stays a parameter, because published checkpoints and parameter counts
    include it, but it has `requires_grad=False`.
    """

    def __init__(
        self,
        stages: tuple[int, int, int, int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        image_size: int = 112,
    ) -> None:
        super().__init__()
        if image_size % 16 != 0:
            raise ValueError(f"IResNet needs an image size divisible by 16, got {image_size}")
        self.image_size = image_size
        self.embedding_size = embedding_size
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=_BN_EPS)
        self.prelu = nn.PReLU(64)
        self.layer1 = _make_stage(64, _STAGE_WIDTHS[0], stages[0])
        self.layer2 = _make_stage(_STAGE_WIDTHS[0], _STAGE_WIDTHS[1], stages[1])
        self.layer3 = _make_stage(_STAGE_WIDTHS[1], _STAGE_WIDTHS[2], stages[2])
        self.layer4 = _make_stage(_STAGE_WIDTHS[2], _STAGE_WIDTHS[3], stages[3])
        self.bn2 = nn.BatchNorm2d(_STAGE_WIDTHS[3], eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        final_size = image_size // 16
        self.fc = nn.Linear(_STAGE_WIDTHS[3] * final_size * final_size, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=_BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.1)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.features(self.fc(x))


def build_iresnet(
    arch: str, embedding_size: int = 512, dropout: float = 0.0, image_size: int = 112
) -> IResNet:
    """Build the IResNet named `arch` ("iresnet18", "iresnet34", "iresnet50", "iresnet100")."""
    depth_text = arch.removeprefix("iresnet")
    if not arch.startswith("iresnet") or not depth_text.isdigit():
        raise ValueError(f"unknown teacher architecture {arch!r}; expected one of {IRESNET_ARCHS}")
    depth = int(depth_text)
    if depth not in IRESNET_STAGES:
        raise ValueError(f"unknown teacher architecture {arch!r}; expected one of {IRESNET_ARCHS}")
    return IResNet(IRESNET_STAGES[depth], embedding_size, dropout, image_size)
