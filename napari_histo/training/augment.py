"""Batch augmentation on tensors: dihedral, colour and blur (DigiPathAI-style)."""

from __future__ import annotations

import imagecodecs
import numpy as np
import torch

__all__ = ["augment_batch", "hed_jitter", "jpeg_artefacts"]


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    *,
    brightness: float = 0.1,
    contrast: float = 0.15,
    saturation: float = 0.15,
    hue: float = 0.04,
    stain: float = 0.1,
    blur: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random dihedral transform and colour jitter per sample.

    Parameters
    ----------
    images : Tensor of float, shape (B, 3, H, W)
        RGB in [0, 1].
    masks : Tensor, shape (B, H, W)
        Labels, transformed with the same dihedral transform.
    generator : torch.Generator
        Source of randomness (reproducible runs).
    brightness, contrast, saturation, hue : float
        Maximum jitter: additive brightness, multiplicative contrast and
        saturation (± fraction), hue rotation in turns.
    stain : float
        Maximum ± fraction of optical-density scaling per channel (stain
        intensity variation).
    blur : float
        Largest Gaussian blur sigma, px (sigma uniform in [0, blur] per sample;
        0 turns blur off).

    Returns
    -------
    images, masks : Tensor
        Augmented copies; images clipped to [0, 1].
    """
    batch = images.shape[0]
    out_images, out_masks = [], []
    turns = torch.randint(0, 4, (batch,), generator=generator).tolist()
    flips = torch.randint(0, 2, (batch,), generator=generator).tolist()
    if images.shape[-1] != images.shape[-2]:
        turns = [2 * (t % 2) for t in turns]  # quarter turns would change the shape
    for i in range(batch):
        image, mask = images[i], masks[i]
        if flips[i]:
            image, mask = image.flip(-1), mask.flip(-1)
        out_images.append(torch.rot90(image, turns[i], dims=(-2, -1)))
        out_masks.append(torch.rot90(mask, turns[i], dims=(-2, -1)))
    x = torch.stack(out_images)

    def uniform(scale: float, *shape: int) -> torch.Tensor:
        # Drawn by `generator` (on the CPU): the same draws on any device.
        return ((torch.rand(batch, *shape, generator=generator) * 2 - 1) * scale).to(x.device)

    # Stain intensity in optical density, per channel.
    od = -torch.log(x.clamp(min=1 / 255))
    od = od * (1 + uniform(stain, 3, 1, 1))
    x = torch.exp(-od)
    x = x + uniform(brightness, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + uniform(contrast, 1, 1, 1)) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (1 + uniform(saturation, 1, 1, 1)) + grey
    x = _rotate_hue(x, uniform(hue, 1, 1) * 2 * torch.pi)
    if blur > 0:
        x = _blur(x, (torch.rand(batch, generator=generator) * blur).to(x.device))
    return x.clamp(0, 1), torch.stack(out_masks)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each sample (B, C, H, W) by its own `sigma` (B,), px."""
    radius = max(1, int(torch.ceil(2 * sigma.max()).item()))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.clamp(min=1e-3)[:, None].to(x.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K); sigma ~0 gives a delta
    b, c, h, w = x.shape
    flat = x.reshape(1, b * c, h, w)
    k = kernel.repeat_interleave(c, dim=0)  # (B*C, K)
    flat = torch.nn.functional.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = torch.nn.functional.conv2d(flat, k[:, None, None, :], groups=b * c)
    flat = torch.nn.functional.conv2d(flat, k[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `angle` radians (per sample) in YIQ space."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype
    )
    from_yiq = torch.linalg.inv(to_yiq).to(x.device)
    to_yiq = to_yiq.to(x.device)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", from_yiq, yiq)


#: Stain vectors of haematoxylin, eosin and DAB (rows, RGB optical density;
#: Ruifrok & Johnston 2001, as in scikit-image's ``rgb_from_hed``).
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def hed_jitter(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: float = 0.25,
    shift: float = 0.05,
) -> torch.Tensor:
    """Random stain variation in HED space (Tellez et al. 2018), per sample.

    Each image's haematoxylin, eosin and DAB concentrations (optical density
    unmixed with the Ruifrok–Johnston vectors) are scaled by ``1 ± scale`` and
    shifted by ``± shift`` (OD units), then mixed back to RGB.

    Parameters
    ----------
    images : Tensor of float, shape (B, 3, H, W)
        RGB in [0, 1].
    generator : torch.Generator
        Source of randomness.
    scale, shift : float
        Largest relative scaling and absolute shift of each stain's density.

    Returns
    -------
    Tensor
        Jittered RGB in [0, 1], same shape.
    """
    batch = images.shape[0]
    dtype = images.dtype
    od = -torch.log(images.clamp(min=1 / 255))
    device = images.device
    hed = torch.einsum("bchw,cd->bdhw", od, _HED_FROM_RGB.to(device, dtype))
    # Drawn by `generator` (on the CPU): the same draws on any device.
    alpha = 1 + (torch.rand(batch, 3, 1, 1, generator=generator) * 2 - 1).to(device, dtype) * scale
    beta = (torch.rand(batch, 3, 1, 1, generator=generator) * 2 - 1).to(device, dtype) * shift
    hed = hed * alpha + beta
    od = torch.einsum("bdhw,dc->bchw", hed, _RGB_FROM_HED.to(device, dtype))
    return torch.exp(-od.clamp(min=0)).clamp(0, 1)


def jpeg_artefacts(
    rgb: np.ndarray, rng: np.random.Generator, quality: tuple[int, int]
) -> np.ndarray:
    """`rgb` (H, W, 3) uint8 JPEG-compressed at a random quality in `quality` and decoded."""
    level = int(rng.integers(quality[0], quality[1] + 1))
    encoded = imagecodecs.jpeg_encode(np.ascontiguousarray(rgb), level=level)
    return imagecodecs.jpeg_decode(encoded)
