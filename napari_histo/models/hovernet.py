"""A small HoVer-Net-style nuclei network in plain torch (Graham et al. 2019).

One shared residual encoder and two decoders: the *NP* decoder gives nuclear-pixel
logits (background, nucleus) and the *HV* decoder gives the horizontal and vertical
distances of each nuclear pixel to its nucleus's centroid, normalised to [-1, 1]
within every nucleus. ``forward`` returns both as one tensor of 4 channels::

    out[:, 0:2]  NP logits (softmax over dim 1 → P(background), P(nucleus))
    out[:, 2]    horizontal map (x offset), ~[-1, 1]
    out[:, 3]    vertical map (y offset), ~[-1, 1]

so a model card describes it with ``classes = ["background", "nucleus"]`` and the
loader expects ``len(classes) + extra_outputs`` channels. Instances come from the
maps by :func:`napari_histo.nuclei.learned.hv_postprocess`.

It is registered as architecture ``"hovernet"`` with task ``"nuclei"``, so
:func:`~napari_histo.models.latest_cards` does not offer it as a tumour-ensemble member.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_histo.models._common import (
    PreActBlock,
    _check_input,
    _check_int,
    _check_norm,
    _conv3x3,
    _init_weights,
    _norm,
)
from napari_histo.models.registry import register_architecture

__all__ = ["HoverNet"]


class _DecoderLevel(nn.Module):
    """Bilinear 2× upsampling, concatenation with the skip, norm, ReLU, 3×3 conv."""

    def __init__(self, cin: int, cskip: int, cout: int, norm: str) -> None:
        super().__init__()
        self.norm = _norm(norm, cin + cskip)
        self.conv = _conv3x3(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(F.relu(self.norm(torch.cat([x, skip], dim=1))))


class _Decoder(nn.Module):
    def __init__(self, channels: list[int], out: int, norm: str) -> None:
        super().__init__()
        depth = len(channels) - 1
        self.levels = nn.ModuleList(
            _DecoderLevel(channels[i], channels[i - 1], channels[i - 1], norm)
            for i in range(depth, 0, -1)
        )
        self.head = nn.Sequential(
            _norm(norm, channels[0]), nn.ReLU(inplace=True), nn.Conv2d(channels[0], out, 1)
        )

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for level, skip in zip(self.levels, reversed(skips[:-1]), strict=True):
            out = level(out, skip)
        return self.head(out)


@register_architecture("hovernet", task="nuclei")
class HoverNet(nn.Module):
    """HoVer-Net-style network: shared encoder, NP and HV decoders.

    Parameters
    ----------
    width : int, default 16
        Channels at full resolution; level ``i`` has ``width * min(2**i, 4)``.
    depth : int, default 3
        Number of 2× downsamplings (2 to 5); inputs must be multiples of ``2**depth``.
    norm : {"batch", "group"}, default "batch"
        BatchNorm or GroupNorm.

    Attributes
    ----------
    extra_outputs : int
        Output channels beyond the class logits (the two HV maps).

    Notes
    -----
    At the defaults: 0.37 M parameters (1.5 MB of float32 weights); the bundled
    model (``width=12``) has 0.21 M (0.86 MB). Its output depends on about 40 µm
    of context around a pixel at 0.5 µm/px (measured).
    """

    extra_outputs = 2

    def __init__(self, width: int = 16, depth: int = 3, norm: str = "batch") -> None:
        super().__init__()
        width = _check_int("width", width, 4, 64)
        depth = _check_int("depth", depth, 2, 5)
        norm = _check_norm(norm)
        self.hparams = {"width": width, "depth": depth, "norm": norm}
        self.size_multiple = 2**depth
        ch = [width * min(2**level, 4) for level in range(depth + 1)]
        self.stem = nn.Sequential(_conv3x3(3, width), PreActBlock(width, width, norm=norm))
        self.down = nn.ModuleList(
            PreActBlock(ch[i - 1], ch[i], stride=2, norm=norm) for i in range(1, depth + 1)
        )
        self.np_decoder = _Decoder(ch, 2, norm)
        self.hv_decoder = _Decoder(ch, 2, norm)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NP logits and HV maps ``(B, 4, H, W)`` for a normalised ``(B, 3, H, W)`` batch."""
        _check_input(x, self.size_multiple, "hovernet")
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        return torch.cat([self.np_decoder(skips), self.hv_decoder(skips)], dim=1)
