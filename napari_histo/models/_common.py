"""Checks and building blocks shared by the architectures (U-Nets, DeepLabV3+, HoVer-Net)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_NORMS = ("batch", "group")


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"`{name}` must be {bounds}, got {value!r}")
    return value


def _check_norm(norm: object) -> str:
    if norm not in _NORMS:
        raise ValueError(f"`norm` must be one of {', '.join(_NORMS)}, got {norm!r}")
    return str(norm)


def _check_input(x: torch.Tensor, multiple: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: input must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(
            f"{name}: input H and W must be multiples of {multiple}, got {tuple(x.shape[-2:])}"
        )


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _up_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class PreActBlock(nn.Module):
    """Pre-activation basic residual block: (norm, ReLU, 3×3 conv) × 2 + shortcut.

    The shortcut is the identity, or a strided 1×1 convolution of the activated
    input when the shape changes (He et al. 2016, "Identity mappings").
    """

    def __init__(
        self, cin: int, cout: int, *, stride: int = 1, dilation: int = 1, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.norm1 = _norm(norm, cin)
        self.conv1 = _conv3x3(cin, cout, stride, dilation)
        self.norm2 = _norm(norm, cout)
        self.conv2 = _conv3x3(cout, cout, 1, dilation)
        self.shortcut = _conv1x1(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.norm1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(F.relu(self.norm2(out)))
        return out + shortcut
