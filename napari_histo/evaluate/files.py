"""Image/mask pairs of two folders: finding them, reading and checking images and masks.

See :func:`read_mask` for what counts as a binary mask; every problem is one
:class:`EvaluationError` line naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_histo.errors import HistoError

#: Image file suffixes looked at in the folders (others, e.g. README.txt, are ignored).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2", ".jxl")
#: Mask file stems may add one of these to the image's stem (``10670_mask.png``).
MASK_SUFFIXES = ("_mask", "-mask", "_masks", "_gt", "-gt", "_label", "_labels")
#: Grey values strictly between these count as "mid-grey" in a 0/255 mask.
MID_GREY = (32, 223)
#: A 0/255 mask may have at most this fraction of mid-grey pixels (JPEG noise,
#: blurred or anti-aliased edges); it is thresholded at 128.
MAX_MID_GREY = 0.25
#: Largest tile evaluated, in pixels (larger images belong in a slide).
MAX_TILE_PIXELS = 64_000_000


class EvaluationError(HistoError):
    """Bad evaluation input: one line naming the file or folder and the problem."""


@dataclass(frozen=True)
class TilePair:
    """An image file and its mask file."""

    name: str
    image: Path
    mask: Path


def _image_files(directory: Path, what: str) -> list[Path]:
    if not directory.exists():
        raise EvaluationError(f"{directory}: no such folder ({what})")
    if not directory.is_dir():
        raise EvaluationError(f"{directory}: not a folder ({what})")
    try:
        entries = sorted(directory.iterdir())
    except OSError as err:
        raise EvaluationError(f"{directory}: cannot list ({err.strerror or err})") from None
    return [
        p
        for p in entries
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]


def _mask_key(stem: str) -> str:
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _by_key(paths: Iterable[Path], key: Callable[[str], str], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in paths:
        k = key(path.stem)
        if k in out:
            raise EvaluationError(
                f"{path}: two {what} files for {k!r} ({out[k].name} and {path.name}); keep one"
            )
        out[k] = path
    return out


def find_pairs(
    images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str]
) -> list[TilePair]:
    """Image/mask pairs of two folders, matched by file stem, sorted by name.

    A mask matches an image with the same stem (``a.jpg`` and ``a.png``) or the
    stem plus one of :data:`MASK_SUFFIXES` (``a_mask.png``). Files whose suffix
    is not in :data:`IMAGE_SUFFIXES` and hidden files are ignored. The two
    folders may be the same one; then files with a mask suffix are the masks.

    Raises
    ------
    EvaluationError
        A folder is missing or holds no image files; an image has no mask or a
        mask no image (the first one named, with how many more); two files
        claim the same name.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    image_files = _image_files(images_dir, "images")
    mask_files = _image_files(masks_dir, "masks")
    if images_dir.resolve() == masks_dir.resolve():
        mask_files = [p for p in image_files if _mask_key(p.stem) != p.stem]
        image_files = [p for p in image_files if _mask_key(p.stem) == p.stem]
    if not image_files:
        raise EvaluationError(
            f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) to evaluate"
        )
    if not mask_files:
        raise EvaluationError(f"{masks_dir}: no mask files ({', '.join(IMAGE_SUFFIXES)})")
    images = _by_key(image_files, lambda s: s, "image")
    masks = _by_key(mask_files, _mask_key, "mask")
    lonely_images = [images[k] for k in images if k not in masks]
    lonely_masks = [masks[k] for k in masks if k not in images]
    if lonely_images:
        more = (
            f" (and {len(lonely_images) - 1} more images without masks)"
            if len(lonely_images) > 1
            else ""
        )
        raise EvaluationError(
            f"{lonely_images[0]}: no mask named {lonely_images[0].stem}.* or "
            f"{lonely_images[0].stem}_mask.* in {masks_dir}{more}"
        )
    if lonely_masks:
        more = (
            f" (and {len(lonely_masks) - 1} more masks without images)"
            if len(lonely_masks) > 1
            else ""
        )
        raise EvaluationError(
            f"{lonely_masks[0]}: no image named {_mask_key(lonely_masks[0].stem)}.* in "
            f"{images_dir}{more}"
        )
    return [TilePair(k, images[k], masks[k]) for k in sorted(images)]


def _decode(path: Path) -> np.ndarray:
    """Decoded pixels of an image file, or EvaluationError naming it."""
    import imagecodecs

    try:
        data = path.read_bytes()
    except OSError as err:
        raise EvaluationError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not data:
        raise EvaluationError(f"{path}: is empty (0 bytes)")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        # libjpeg fills a truncated JPEG with grey without an error.
        raise EvaluationError(f"{path}: truncated JPEG (no end-of-image marker)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = imagecodecs.imread(data)
    except Exception as err:  # imagecodecs raises many types; one line is what matters
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise EvaluationError(f"{path}: cannot be decoded as an image ({first})") from None
    pixels = np.asarray(pixels)
    if pixels.size == 0:
        raise EvaluationError(f"{path}: decodes to an empty image")
    if (pixels.ndim == 3 and pixels.shape[-1] > 4) or pixels.ndim > 3:
        raise EvaluationError(
            f"{path}: holds several images or planes (shape {pixels.shape}); expected one"
        )
    if pixels.shape[0] * pixels.shape[1] > MAX_TILE_PIXELS:
        raise EvaluationError(
            f"{path}: {pixels.shape[1]} x {pixels.shape[0]} px is larger than a tile "
            f"({MAX_TILE_PIXELS // 1_000_000} Mpx at most); evaluate it as a slide"
        )
    return pixels


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An 8-bit RGB tile from any format imagecodecs reads (alpha dropped).

    Raises
    ------
    EvaluationError
        Missing, empty, truncated or undecodable file; greyscale, not 8-bit,
        several pages, smaller than 8 px or larger than :data:`MAX_TILE_PIXELS`.
    """
    path = Path(path)
    pixels = _decode(path)
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise EvaluationError(
            f"{path}: is not an RGB image (shape {pixels.shape}); expected H&E colour"
        )
    if pixels.dtype != np.uint8:
        raise EvaluationError(f"{path}: has {pixels.dtype} pixels; expected 8-bit RGB")
    if min(pixels.shape[:2]) < 8:
        raise EvaluationError(f"{path}: {pixels.shape[1]} x {pixels.shape[0]} px is too small")
    return np.ascontiguousarray(pixels[..., :3])


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A binary tumor mask (uint8 0/1) from a 0/1 or 0/255 image.

    Accepted: single-channel, or 3/4-channel grey (channels equal within JPEG
    noise), of
    - values 0 and 1 (any integer type, or bool);
    - values 0 and 255 (or 65535 in 16 bits), thresholded at half range. In
      8 bits up to :data:`MAX_MID_GREY` (25%) of the pixels may be mid-grey
      (33–222: JPEG noise, blurred or anti-aliased edges).

    Raises
    ------
    EvaluationError
        Not decodable (as :func:`read_image`); a colour mask; class or
        instance labels (values like 0, 1, 2, 3); a greyscale picture (more
        than 25% mid-grey); a float mask with values other than 0 and 1.
    """
    path = Path(path)
    m = _decode(path)
    if m.ndim == 3:
        if m.shape[-1] >= 3:
            rgb = m[..., :3].astype(np.int32)
            spread = rgb.max(axis=-1) - rgb.min(axis=-1)
            coloured = float((spread > 64).mean())
            if coloured > 0.01:
                raise EvaluationError(
                    f"{path}: colour mask ({100 * coloured:.1f}% of pixels are coloured); "
                    "expected a binary grey mask (0/1 or 0/255)"
                )
        m = m[..., 0]
    if m.dtype == bool:
        return m.astype(np.uint8)
    if np.issubdtype(m.dtype, np.floating):
        finite = np.isfinite(m)
        if not finite.all() or not np.isin(m, (0.0, 1.0)).all():
            raise EvaluationError(
                f"{path}: float mask with values other than 0 and 1 "
                f"(range {np.nanmin(m):.3g}–{np.nanmax(m):.3g}); expected a binary mask"
            )
        return (m > 0.5).astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer):
        raise EvaluationError(f"{path}: has {m.dtype} pixels; expected a binary mask")
    top = int(m.max())
    if top <= 1:
        return (m > 0).astype(np.uint8)
    if m.dtype != np.uint8:
        full = np.iinfo(m.dtype).max
        values = np.unique(m)
        if set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, full}:
            return (m > 0).astype(np.uint8)
        raise EvaluationError(
            f"{path}: {len(values)} distinct values ({_few(values)}); expected a binary mask "
            "(0/1 or 0/255), not class or instance labels"
        )
    counts = np.bincount(m.ravel(), minlength=256)
    if top < MID_GREY[0]:
        values = np.flatnonzero(counts)
        raise EvaluationError(
            f"{path}: values {_few(values)} look like class labels; expected a binary mask "
            "(0/1 or 0/255)"
        )
    mid = float(counts[MID_GREY[0] + 1 : MID_GREY[1]].sum()) / m.size
    if mid > MAX_MID_GREY:
        raise EvaluationError(
            f"{path}: {100 * mid:.0f}% of pixels are mid-grey (33–222); expected a binary "
            f"0/255 mask (up to {100 * MAX_MID_GREY:.0f}% JPEG noise or soft edges allowed)"
        )
    return (m >= 128).astype(np.uint8)


def _few(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:6].tolist())
    return shown + (", …" if len(values) > 6 else "")


def check_pair(pair: TilePair) -> tuple[np.ndarray, np.ndarray]:
    """RGB tile and binary mask of a pair (:func:`read_image`, :func:`read_mask`), same size."""
    rgb = read_image(pair.image)
    mask = read_mask(pair.mask)
    if mask.shape != rgb.shape[:2]:
        raise EvaluationError(
            f"{pair.mask}: mask is {mask.shape[1]} x {mask.shape[0]} px but image "
            f"{pair.image.name} is {rgb.shape[1]} x {rgb.shape[0]} px; sizes must match"
        )
    return rgb, mask
