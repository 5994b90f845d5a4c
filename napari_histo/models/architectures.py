"""Segmentation networks in plain torch: a residual U-Net, a dense U-Net and DeepLabV3+.

The three differ on purpose (residual vs. densely connected encoders, skip-connected
decoder vs. atrous pyramid), as in DigiPathAI's ensemble (Khened et al. 2021), so
that disagreement between them says something about epistemic uncertainty.

Every model follows one contract:

* ``forward(x)`` takes ``x`` float32 of shape ``(B, 3, H, W)``, RGB scaled to
  [0, 1] then normalised with the model card's mean and std, and ``H``, ``W``
  multiples of 32 (each model's :attr:`size_multiple` says the smallest multiple
  it needs; 32 always works);
* it returns logits of shape ``(B, num_classes, H, W)`` (softmax over dim 1 gives
  class probabilities);
* constructor keyword arguments are JSON-friendly (ints and strings) and are kept
  in :attr:`hparams`, which is what a model card's ``config`` holds.

Normalisation layers are BatchNorm by default (fast on CPU, and foldable into the
convolution for deployment; batch statistics are frozen in ``eval()`` so outputs
are deterministic and independent of the batch); ``norm="group"`` selects
GroupNorm, which behaves the same in training and inference and suits fine-tuning
on very small batches. There is no dropout.
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
    _conv1x1,
    _conv3x3,
    _init_weights,
    _norm,
    _up_to,
)
from napari_histo.models.registry import register_architecture

__all__ = ["DeepLabV3Plus", "DenseUNet", "ResUNet"]


class ConvNormReLU(nn.Sequential):
    """3×3 (or 1×1) convolution, normalisation, ReLU."""

    def __init__(
        self, cin: int, cout: int, *, kernel: int = 3, dilation: int = 1, norm: str = "batch"
    ) -> None:
        conv = _conv3x3(cin, cout, 1, dilation) if kernel == 3 else _conv1x1(cin, cout)
        super().__init__(conv, _norm(norm, cout), nn.ReLU(inplace=True))


class DenseLayer(nn.Module):
    """Norm, ReLU, 3×3 conv producing `growth` channels, concatenated to the input."""

    def __init__(self, cin: int, growth: int, *, norm: str = "batch") -> None:
        super().__init__()
        self.norm = _norm(norm, cin)
        self.conv = _conv3x3(cin, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], dim=1)


class DenseBlock(nn.Sequential):
    """`layers` dense layers; output has ``cin + layers * growth`` channels."""

    def __init__(self, cin: int, growth: int, layers: int, *, norm: str = "batch") -> None:
        super().__init__(*(DenseLayer(cin + i * growth, growth, norm=norm) for i in range(layers)))
        self.out_channels = cin + layers * growth


class Transition(nn.Sequential):
    """Norm, ReLU, 1×1 conv to `cout` channels, then 2×2 average pooling (if `pool`)."""

    def __init__(self, cin: int, cout: int, *, pool: bool = True, norm: str = "batch") -> None:
        layers: list[nn.Module] = [_norm(norm, cin), nn.ReLU(inplace=True), _conv1x1(cin, cout)]
        if pool:
            layers.append(nn.AvgPool2d(2))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Bilinear 2× upsampling, concatenation with the skip, then a block on the sum."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([_up_to(x, skip), skip], dim=1))


# --------------------------------------------------------------------------- models


def _level_channels(width: int, depth: int) -> list[int]:
    """Channels per U-Net level: ``width * 2**level``, capped at ``16 * width``."""
    return [width * 2 ** min(level, 4) for level in range(depth + 1)]


@register_architecture("resunet")
class ResUNet(nn.Module):
    """U-Net whose encoder and decoder are pre-activation residual blocks.

    Parameters
    ----------
    num_classes : int, default 2
        Output channels (logits), >= 2.
    width : int, default 16
        Channels at full resolution; level ``i`` has ``width * 2**i`` (capped at 16×).
    depth : int, default 4
        Number of 2× downsamplings (1 to 5); inputs must be multiples of ``2**depth``.
    blocks : int, default 1
        Residual blocks per encoder level.
    norm : {"batch", "group"}, default "batch"
        BatchNorm or GroupNorm.

    Notes
    -----
    At the defaults: 2.08 M parameters; 8.3 MB of float32 weights and buffers.
    """

    def __init__(
        self,
        num_classes: int = 2,
        width: int = 16,
        depth: int = 4,
        blocks: int = 1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        num_classes = _check_int("num_classes", num_classes, 2)
        width = _check_int("width", width, 4, 256)
        depth = _check_int("depth", depth, 1, 5)
        blocks = _check_int("blocks", blocks, 1, 8)
        norm = _check_norm(norm)
        self.hparams = {
            "num_classes": num_classes, "width": width, "depth": depth, "blocks": blocks,
            "norm": norm,
        }  # fmt: skip
        self.size_multiple = 2**depth
        ch = _level_channels(width, depth)
        self.stem = nn.Sequential(_conv3x3(3, width), PreActBlock(width, width, norm=norm))
        self.down = nn.ModuleList(
            nn.Sequential(
                PreActBlock(ch[i - 1], ch[i], stride=2, norm=norm),
                *(PreActBlock(ch[i], ch[i], norm=norm) for _ in range(blocks - 1)),
            )
            for i in range(1, depth + 1)
        )
        self.up = nn.ModuleList(
            UpBlock(PreActBlock(ch[i] + ch[i - 1], ch[i - 1], norm=norm))
            for i in range(depth, 0, -1)
        )
        self.head = nn.Sequential(
            _norm(norm, width), nn.ReLU(inplace=True), nn.Conv2d(width, num_classes, 1)
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for a normalised ``(B, 3, H, W)`` batch."""
        _check_input(x, self.size_multiple, "resunet")
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        out = skips.pop()
        for up in self.up:
            out = up(out, skips.pop())
        return self.head(out)


@register_architecture("denseunet")
class DenseUNet(nn.Module):
    """U-Net with a densely connected encoder (dense blocks and transitions).

    Level ``i`` (of ``depth + 1``) enters a dense block with ``c_i = width * 2**i``
    channels (capped at 16 × `width`) and grows by ``c_i // 4`` channels per layer;
    the block output is the skip connection, and a transition (1×1 conv, 2×2
    average pool) feeds the next level. The decoder upsamples bilinearly,
    concatenates the skip and applies two 3×3 conv-norm-ReLU layers.

    Parameters
    ----------
    num_classes : int, default 2
        Output channels (logits), >= 2.
    width : int, default 16
        Channels entering the full-resolution dense block.
    depth : int, default 4
        Number of 2× downsamplings (1 to 5); inputs must be multiples of ``2**depth``.
    layers : int, default 4
        Dense layers per block.
    norm : {"batch", "group"}, default "batch"
        BatchNorm or GroupNorm.

    Notes
    -----
    At the defaults: 2.29 M parameters; 9.2 MB of float32 weights and buffers.
    """

    def __init__(
        self,
        num_classes: int = 2,
        width: int = 16,
        depth: int = 4,
        layers: int = 4,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        num_classes = _check_int("num_classes", num_classes, 2)
        width = _check_int("width", width, 4, 256)
        depth = _check_int("depth", depth, 1, 5)
        layers = _check_int("layers", layers, 1, 16)
        norm = _check_norm(norm)
        self.hparams = {
            "num_classes": num_classes, "width": width, "depth": depth, "layers": layers,
            "norm": norm,
        }  # fmt: skip
        self.size_multiple = 2**depth
        ch = _level_channels(width, depth)
        self.stem = _conv3x3(3, width)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        skip_ch = []
        for i in range(depth + 1):
            block = DenseBlock(ch[i], max(ch[i] // 4, 1), layers, norm=norm)
            self.blocks.append(block)
            skip_ch.append(block.out_channels)
            if i < depth:
                self.transitions.append(Transition(block.out_channels, ch[i + 1], norm=norm))
        # Squeeze the bottom block back to c_depth before decoding.
        self.bottleneck = Transition(skip_ch[-1], ch[depth], pool=False, norm=norm)
        self.up = nn.ModuleList(
            UpBlock(
                nn.Sequential(
                    ConvNormReLU(ch[i + 1] + skip_ch[i], ch[i], norm=norm),
                    ConvNormReLU(ch[i], ch[i], norm=norm),
                )
            )
            for i in range(depth - 1, -1, -1)
        )
        self.head = nn.Conv2d(width, num_classes, 1)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for a normalised ``(B, 3, H, W)`` batch."""
        _check_input(x, self.size_multiple, "denseunet")
        out = self.stem(x)
        skips = []
        for i, block in enumerate(self.blocks):
            out = block(out)
            if i < len(self.transitions):
                skips.append(out)
                out = self.transitions[i](out)
        out = self.bottleneck(out)
        for up in self.up:
            out = up(out, skips.pop())
        return self.head(out)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, three atrous 3×3 and an image-pooling branch.

    The image-pooling branch has a bias and no normalisation, because BatchNorm
    cannot normalise a 1×1 map of a batch of one during training.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        rates: tuple[int, int, int],
        norm: str,
        pool_window: int | None = None,
    ) -> None:
        super().__init__()
        self.pool_window = pool_window
        self.branches = nn.ModuleList(
            [ConvNormReLU(cin, cout, kernel=1, norm=norm)]
            + [ConvNormReLU(cin, cout, dilation=r, norm=norm) for r in rates]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True)
        )
        self.project = ConvNormReLU(cout * (len(rates) + 2), cout, kernel=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.pool_window is None:
            outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        else:
            # The mean over a window centred on each position (the window's part
            # inside the input): image pooling of a patch centred there, so the
            # network is local and large tiles need only a margin.
            k = self.pool_window
            pooled = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
            outs.append(self.pool[2](self.pool[1](pooled)))
        return self.project(torch.cat(outs, dim=1))


@register_architecture("deeplabv3plus")
class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ on a small pre-activation residual backbone.

    Backbone: a stride-2 stem, then residual stages at strides 4 (low-level
    features), 8, and 16 (or 8 with dilation 2 when ``output_stride=8``), and a
    last dilated stage. ASPP with a 1×1 branch, three atrous branches and image
    pooling; a decoder that fuses the stride-4 features; bilinear upsampling of
    the logits to the input size.

    Parameters
    ----------
    num_classes : int, default 2
        Output channels (logits), >= 2.
    width : int, default 16
        Stem channels; stages have 2×, 4×, 8× and 8× `width`, ASPP and decoder 8×.
    output_stride : {16, 8}, default 16
        Input size over the ASPP feature size.
    atrous_rate : int, default 3
        Smallest atrous rate, in feature pixels at stride 16; the three rates are
        ``(1, 2, 3) * atrous_rate``, doubled at output stride 8. The paper's
        (6, 12, 18) were chosen for 513 px crops (33 px features); the default
        (3, 6, 9) scales them to 256 px patches (16 px features).
    norm : {"batch", "group"}, default "batch"
        BatchNorm or GroupNorm.
    image_pool_px : int, optional
        Side (input px) of the window the ASPP's image-pooling branch averages,
        centred on each position, made an odd number of features (256 px at
        output stride 16: 17 features, 272 px); None (default) pools the whole
        input, as the paper. With a window the network is local (its output depends only on
        input within a bounded distance), so it runs on large tiles with a
        margin instead of blended patches; a window the size of the training
        crops pools what training saw at the crop's centre.

    Notes
    -----
    At the defaults: 2.19 M parameters; 8.8 MB of float32 weights and buffers.
    """

    #: Most of its work is at 1/8-1/16 resolution, so it keeps its speed per
    #: pixel on large inputs: on a CPU the engine runs it on pieces of this core
    #: (px) in large tiles, twice the U-Nets' (:func:`napari_histo.inference.blocks.member_cores`).
    cpu_piece_px = 1024

    def __init__(
        self,
        num_classes: int = 2,
        width: int = 16,
        output_stride: int = 16,
        atrous_rate: int = 3,
        norm: str = "batch",
        image_pool_px: int | None = None,
    ) -> None:
        super().__init__()
        num_classes = _check_int("num_classes", num_classes, 2)
        width = _check_int("width", width, 4, 256)
        if output_stride not in (8, 16) or isinstance(output_stride, bool):
            raise ValueError(f"`output_stride` must be 8 or 16, got {output_stride!r}")
        atrous_rate = _check_int("atrous_rate", atrous_rate, 1, 32)
        norm = _check_norm(norm)
        if image_pool_px is not None:
            image_pool_px = _check_int("image_pool_px", image_pool_px, output_stride, 4096)
        self.hparams = {
            "num_classes": num_classes, "width": width, "output_stride": output_stride,
            "atrous_rate": atrous_rate, "norm": norm, "image_pool_px": image_pool_px,
        }  # fmt: skip
        self.size_multiple = 16
        w = width
        dil = 16 // output_stride  # 1 at stride 16, 2 at stride 8
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False),
            _norm(norm, w),
            nn.ReLU(inplace=True),
            _conv3x3(w, w),
        )
        self.layer1 = nn.Sequential(  # stride 4, low-level features
            PreActBlock(w, 2 * w, stride=2, norm=norm), PreActBlock(2 * w, 2 * w, norm=norm)
        )
        self.layer2 = nn.Sequential(  # stride 8
            PreActBlock(2 * w, 4 * w, stride=2, norm=norm), PreActBlock(4 * w, 4 * w, norm=norm)
        )
        self.layer3 = nn.Sequential(  # stride 16, or 8 dilated
            PreActBlock(4 * w, 8 * w, stride=2 // dil, dilation=dil, norm=norm),
            PreActBlock(8 * w, 8 * w, dilation=dil, norm=norm),
        )
        self.layer4 = nn.Sequential(  # same stride, dilated
            PreActBlock(8 * w, 8 * w, dilation=2 * dil, norm=norm),
            PreActBlock(8 * w, 8 * w, dilation=2 * dil, norm=norm),
            _norm(norm, 8 * w),
            nn.ReLU(inplace=True),
        )
        base = atrous_rate * dil
        # An odd number of ASPP features (stride `output_stride`), centred on each:
        # the nearest, or the next odd one (256 px at stride 16: 17 features).
        window = None
        if image_pool_px is not None:
            window = round(image_pool_px / output_stride)
            window += 1 - window % 2
        self.aspp = ASPP(8 * w, 8 * w, (base, 2 * base, 3 * base), norm, window)
        self.low_level = nn.Sequential(
            _norm(norm, 2 * w),
            nn.ReLU(inplace=True),
            ConvNormReLU(2 * w, 3 * w, kernel=1, norm=norm),
        )
        self.decoder = nn.Sequential(
            ConvNormReLU(8 * w + 3 * w, 8 * w, norm=norm),
            ConvNormReLU(8 * w, 8 * w, norm=norm),
            nn.Conv2d(8 * w, num_classes, 1),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for a normalised ``(B, 3, H, W)`` batch."""
        _check_input(x, self.size_multiple, "deeplabv3plus")
        low = self.layer1(self.stem(x))
        deep = self.aspp(self.layer4(self.layer3(self.layer2(low))))
        low = self.low_level(low)
        out = self.decoder(torch.cat([_up_to(deep, low), low], dim=1))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
