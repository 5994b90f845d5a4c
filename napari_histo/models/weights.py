"""Saving and loading model weights safely: safetensors or TorchScript, never pickle.

A model on disk is a JSON card (:mod:`napari_histo.models.card`) plus the weights
file it names, in the same folder::

    napari_histo/resources/models/resunet-1.0.json
    napari_histo/resources/models/resunet-1.0.safetensors

Loading checks, in order: the weights file exists and is not a pickle; its
SHA-256 equals the card's; (safetensors) every tensor name, shape and dtype kind
matches the architecture the card describes and every value is finite;
(TorchScript) a forward pass on a zero patch gives ``(1, len(classes), patch,
patch)``. Every failure is a one-line :class:`~napari_histo.errors.WeightsError`
naming the file.

Pickled checkpoints (``torch.save``, ``.pt``/``.pth``/``.pkl``/``.ckpt``) are
refused: unpickling runs arbitrary code from the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from napari_histo._atomic import default_file_mode
from napari_histo.errors import WeightsError
from napari_histo.models.card import ModelCard, read_card, write_card
from napari_histo.models.registry import build_model

__all__ = [
    "LoadedModel",
    "load_model",
    "save_model",
    "sha256_file",
]

#: File suffixes of pickle-based checkpoints, refused on sight.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")

_PICKLE_MAGIC = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))
_ZIP_MAGIC = b"PK\x03\x04"
_HOW_TO_CONVERT = (
    "convert it once, in a trusted environment, with "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors') "
    "or torch.jit.save(torch.jit.script(model), 'model.pt') and a model card"
)
_SHOWN = 3  # names listed in a mismatch message


def _pickle_refusal(path: Path, what: str) -> WeightsError:
    return WeightsError(
        f"{path}: {what}; refused because unpickling can run arbitrary code; {_HOW_TO_CONVERT}"
    )


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference with the card that describes it.

    Attributes
    ----------
    model : torch.nn.Module or torch.jit.ScriptModule
        In eval mode, on the requested device; registry models are converted to
        ``torch.channels_last`` (faster convolutions; inputs may be in any layout).
    card : ModelCard
        The validated card.
    card_path : Path
        Where the card was read from.
    """

    model: nn.Module
    card: ModelCard
    card_path: Path

    @property
    def weights_path(self) -> Path:
        """The weights file (``card_path.parent / card.weights_file``)."""
        return self.card_path.parent / self.card.weights_file


# --------------------------------------------------------------------------- helpers


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Lower-case hex SHA-256 of a file, read in `chunk_bytes` chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _model_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"`device` must be a torch device such as 'cpu', got {device!r}") from None


def _state_dict_mismatch(
    expected: dict[str, tuple[tuple[int, ...], bool]],
    found: dict[str, tuple[tuple[int, ...], bool]],
) -> str | None:
    """Describe how `found` names/shapes/dtype kinds differ from `expected`, or None."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [
        f"{k} {found[k][0]} (expected {expected[k][0]})"
        for k in expected
        if k in found and found[k][0] != expected[k][0]
    ]
    kind = [
        f"{k} is {'floating' if found[k][1] else 'integer'}"
        for k in expected
        if k in found and found[k][0] == expected[k][0] and found[k][1] != expected[k][1]
    ]
    problems = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong),
        ("wrong dtype", kind),
    ):
        if names:
            more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            problems.append(f"{len(names)} {label}: {', '.join(names[:_SHOWN])}{more}")
    return "; ".join(problems) or None


def _signature(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], bool]]:
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in tensors.items()}


def _link_or_replace(tmp: Path, final: Path) -> bool:
    """Move `tmp` to `final` without overwriting; False if `final` already exists."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system
        if final.exists():
            return False
        os.replace(tmp, final)
        return True
    tmp.unlink()
    return True


# --------------------------------------------------------------------------- save


def save_model(model: nn.Module, card: ModelCard, directory: str | os.PathLike[str]) -> Path:
    """Write a model's weights and card into `directory`.

    Writes ``<name>-<version>.safetensors`` (or ``<name>-<version>.torchscript.pt``
    for a card with ``format="torchscript"`` and a ``torch.jit.ScriptModule``),
    then ``<name>-<version>.json`` with ``weights_file`` and ``sha256`` filled in.
    Both writes are atomic (temporary file, then rename).

    Parameters
    ----------
    model : torch.nn.Module
        The model; its state dict must match ``build_model(card.architecture,
        card.config)`` in names and shapes.
    card : ModelCard
        Describes the model; ``weights_file`` and ``sha256`` are replaced.
    directory : str or PathLike
        Output folder, created if missing.

    Returns
    -------
    Path
        The card path.

    Raises
    ------
    ValueError
        If the model does not match the card's architecture and config, or a
        TorchScript card is given a model that is not a ScriptModule.
    WeightsError
        If a weights file for this name and version already exists with
        different contents (versions are immutable: bump ``card.version``), or a
        file cannot be written.
    """
    if not isinstance(card, ModelCard):
        raise TypeError(f"`card` must be a ModelCard, got {type(card).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{card.name}-{card.version}"
    if card.format == "torchscript":
        if not isinstance(model, torch.jit.ScriptModule):
            raise ValueError(
                f"card {stem} has format torchscript, but `model` is a "
                f"{type(model).__name__}, not a torch.jit.ScriptModule"
            )
        final = directory / f"{stem}.torchscript.pt"
    else:
        _check_model_matches_card(model, card, stem)
        final = directory / f"{stem}.safetensors"

    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
    os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; weights are shared files
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if card.format == "torchscript":
            torch.jit.save(model, str(tmp))
        else:
            tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            # One metadata key only: safetensors writes metadata from a hash map, so
            # several keys come out in random order and the same weights would hash
            # differently from one save to the next.
            save_file(tensors, str(tmp), metadata={"model": stem})
        os.chmod(tmp, default_file_mode())  # save_file recreates the file as 0600
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        if not _link_or_replace(tmp, final) and sha256_file(final) != digest:
            raise WeightsError(
                f"{final}: already exists with different weights; versions are immutable, "
                f"so give the card a new `version` (current {card.version!r})"
            )
    except OSError as err:
        raise WeightsError(f"{final}: cannot write ({err.strerror or err})") from None
    finally:
        tmp.unlink(missing_ok=True)
    saved = dataclasses.replace(card, weights_file=final.name, sha256=digest)
    return write_card(directory / f"{stem}.json", saved)


def _check_model_matches_card(model: nn.Module, card: ModelCard, stem: str) -> None:
    try:
        reference = build_model(card.architecture, card.config)
    except ValueError as err:
        raise ValueError(f"card {stem}: {err}") from None
    problem = _state_dict_mismatch(
        _signature(reference.state_dict()), _signature(model.state_dict())
    )
    if problem:
        raise ValueError(
            f"`model` does not match card {stem} ({card.architecture} {card.config}): {problem}"
        )
    num_classes = getattr(reference, "hparams", {}).get("num_classes")
    if num_classes is not None and num_classes != card.num_classes:
        raise ValueError(
            f"card {stem}: config num_classes {num_classes} differs from "
            f"{card.num_classes} `classes` {list(card.classes)}"
        )


# --------------------------------------------------------------------------- load


def load_model(
    card_path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load the model a card describes, after checking it thoroughly.

    Parameters
    ----------
    card_path : str or PathLike
        The ``.json`` model card. A pickled checkpoint given here instead
        (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) is refused with a message saying
        how to convert it.
    device : str or torch.device, default "cpu"
        Where to put the model.

    Returns
    -------
    LoadedModel
        The model in eval mode, its card and the card path.

    Raises
    ------
    WeightsError
        One line naming the card or the weights file: bad card, missing weights
        file, pickled file, SHA-256 mismatch ("file changed or corrupt"),
        corrupt or truncated safetensors, tensor names/shapes that do not match
        the architecture, non-finite weights, TorchScript that fails to load or
        gives the wrong output shape.
    ValueError
        If `device` is not a torch device.
    """
    card_path = Path(card_path)
    device = _model_device(device)
    if card_path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refusal(card_path, "is a pickled checkpoint, not a model card")
    card = read_card(card_path)
    weights = card_path.parent / card.weights_file
    if not weights.is_file():
        raise WeightsError(f"{weights}: weights file named by {card_path.name} does not exist")
    try:
        with weights.open("rb") as f:
            head = f.read(8)
    except OSError as err:
        raise WeightsError(f"{weights}: cannot be read ({err.strerror or err})") from None
    if card.format == "safetensors":
        if weights.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_refusal(weights, f"has a pickle checkpoint suffix {weights.suffix!r}")
        if head.startswith(_PICKLE_MAGIC):
            raise _pickle_refusal(weights, "is a pickle, not safetensors")
        if head.startswith(_ZIP_MAGIC):
            raise _pickle_refusal(weights, "is a torch.save (zip + pickle) file, not safetensors")
    if sha256_file(weights) != card.sha256:
        raise WeightsError(
            f"{weights}: sha256 mismatch (file changed or corrupt); card {card_path.name} "
            f"expects {card.sha256[:12]}..."
        )
    if card.format == "safetensors":
        model = _load_safetensors(weights, card, card_path, device)
    else:
        model = _load_torchscript(weights, device)
    _check_forward(model, card, weights, device)
    return LoadedModel(model=model, card=card, card_path=card_path)


def _load_safetensors(
    weights: Path, card: ModelCard, card_path: Path, device: torch.device
) -> nn.Module:
    try:
        model = build_model(card.architecture, card.config)
    except ValueError as err:
        raise WeightsError(f"{card_path}: {err}") from None
    expected = _signature(model.state_dict())
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {}
            for key in f.keys():
                piece = f.get_slice(key)
                dtype = piece.get_dtype()
                found[key] = (tuple(piece.get_shape()), dtype.startswith(("F", "BF")))
        problem = _state_dict_mismatch(expected, found)
        if problem:
            raise WeightsError(
                f"{weights}: tensors do not match {card.architecture} {card.config} "
                f"from {card_path.name}: {problem}"
            )
        tensors = load_file(str(weights), device="cpu")
    except SafetensorError as err:
        raise WeightsError(f"{weights}: corrupt or truncated safetensors file ({err})") from None
    except OSError as err:
        raise WeightsError(f"{weights}: cannot be read ({err.strerror or err})") from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"{weights}: tensor {key} holds NaN or infinite values")
    model.load_state_dict(tensors, strict=True)
    # channels_last weights make oneDNN / cuDNN pick NHWC kernels for any input
    # layout: 1.3-1.6x faster on CPU for these models; outputs are unchanged in shape.
    return model.to(device=device, memory_format=torch.channels_last).eval()


def _load_torchscript(weights: Path, device: torch.device) -> nn.Module:
    try:
        with zipfile.ZipFile(weights) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise WeightsError(f"{weights}: not a TorchScript archive (not a zip file)") from None
    except OSError as err:
        raise WeightsError(f"{weights}: cannot be read ({err.strerror or err})") from None
    is_script = any(n.endswith("/constants.pkl") for n in names) and any(
        "/code/" in n for n in names
    )
    if not is_script:
        raise _pickle_refusal(weights, "is a torch.save checkpoint, not TorchScript")
    try:
        model = torch.jit.load(str(weights), map_location=device)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{weights}: TorchScript archive cannot be loaded ({first})") from None
    return model.eval()


def _check_forward(model: nn.Module, card: ModelCard, weights: Path, device: torch.device) -> None:
    """Run a zero patch through the model and check the output shape."""
    side = card.patch_px
    channels = card.num_classes + getattr(model, "extra_outputs", 0)
    expected = (1, channels, side, side)
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, side, side, device=device))
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"{weights}: forward on a {side} px zero patch fails ({first})"
        ) from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != expected:
        raise WeightsError(
            f"{weights}: output shape {shape} for a (1, 3, {side}, {side}) input; "
            f"expected {expected} for {card.num_classes} classes"
        )
    if not bool(torch.isfinite(out).all()):
        raise WeightsError(f"{weights}: non-finite output for a zero patch")
