"""Architectures, registry, model cards and safe weights loading, on real files."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from napari_histo.errors import WeightsError
from napari_histo.models import (
    LoadedModel,
    ModelCard,
    architecture_defaults,
    available_architectures,
    build_model,
    default_models_dir,
    latest_cards,
    list_cards,
    load_model,
    read_card,
    register_architecture,
    save_model,
    sha256_file,
    write_card,
)
from napari_histo.models.card import _OPTIONAL as _OPTIONAL_FIELDS
from napari_histo.models.card import MAX_CARD_BYTES

ARCHITECTURES = ("deeplabv3plus", "denseunet", "resunet")
SMALL = {
    "resunet": {"width": 4, "depth": 2},
    "denseunet": {"width": 4, "depth": 2, "layers": 2},
    "deeplabv3plus": {"width": 4},
}
MAX_BYTES = 10 * 1024 * 1024


def make_card(**changes) -> ModelCard:
    values = {
        "name": "resunet",
        "version": "1.0",
        "architecture": "resunet",
        "config": {"width": 4, "depth": 2},
        "input_mpp": 1.0,
        "patch_px": 64,
        "normalisation": {"mean": [0.7, 0.5, 0.7], "std": [0.15, 0.2, 0.15]},
        "classes": ["background", "tumor"],
        "training_data": "synthetic",
        "metrics": {"dice_tumor": 0.5},
        "notes": "test model",
    }
    values.update(changes)
    return ModelCard(**values)


def small_model(seed: int = 0, **config) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resunet", {"width": 4, "depth": 2, **config})
    with torch.no_grad():  # make the buffers non-trivial, so saving them is tested
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def saved(tmp_path) -> pathlib.Path:
    """Card path of a small saved resunet (width 4, depth 2, patch 64)."""
    return save_model(small_model(), make_card(), tmp_path)


def _rewrite_card(card_path: pathlib.Path, **changes) -> None:
    write_card(card_path, dataclasses.replace(read_card(card_path), **changes))


def _replace_weights(
    card_path: pathlib.Path, payload: bytes, name: str | None = None
) -> pathlib.Path:
    """Put `payload` in the weights file (or a new `name`) and fix the card's sha256."""
    card = read_card(card_path)
    path = card_path.parent / (name or card.weights_file)
    path.write_bytes(payload)
    _rewrite_card(card_path, weights_file=path.name, sha256=sha256_file(path))
    return path


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("size", [(64, 96), (256, 256)])
def test_output_shape_at_default_width(architecture, size):
    model = build_model(architecture, {"num_classes": 3}).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 3, *size)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_default_size_is_small(architecture):
    model = build_model(architecture, {})
    params = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert 1_000_000 <= params <= 3_000_000, params
    assert size <= MAX_BYTES, size
    assert architecture_defaults(architecture)["width"] == 16


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_eval_output_is_deterministic_and_batch_independent(architecture, norm):
    torch.manual_seed(0)
    model = build_model(architecture, {**SMALL[architecture], "norm": norm}).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        a = model(x)
        b = model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(single[0], a[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_flow_and_a_step_reduces_the_loss(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, SMALL[architecture]).train()
    x = torch.randn(2, 3, 64, 64)
    target = (x[:, 0] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), target)

    loss = loss_fn()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, no_grad
    optimizer.step()
    assert float(loss_fn().detach()) < float(loss.detach())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_input_size_and_channels_are_checked(architecture):
    model = build_model(architecture, SMALL[architecture]).eval()
    with pytest.raises(ValueError, match="multiples of"):
        model(torch.zeros(1, 3, 64, 70))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 4, 64, 64))


@pytest.mark.parametrize(
    ("architecture", "config", "match"),
    [
        ("resunet", {"width": 0}, "`width`"),
        ("resunet", {"depth": 6}, "`depth`"),
        ("resunet", {"num_classes": 1}, "`num_classes`"),
        ("resunet", {"width": 8.0}, "`width` must be an int"),
        ("denseunet", {"layers": 0}, "`layers`"),
        ("denseunet", {"norm": "layer"}, "`norm`"),
        ("deeplabv3plus", {"output_stride": 32}, "`output_stride`"),
        ("deeplabv3plus", {"atrous_rate": 0}, "`atrous_rate`"),
        ("deeplabv3plus", {"image_pool_px": 8}, "`image_pool_px`"),
        ("deeplabv3plus", {"image_pool_px": 256.0}, "`image_pool_px` must be an int"),
    ],
)
def test_bad_config_values(architecture, config, match):
    with pytest.raises(ValueError, match=match):
        build_model(architecture, config)


def test_deeplab_image_pool_window_is_local():
    # Pooling a 64-px window: an input change 800 px away (beyond the network's
    # reach) leaves a pixel as it was; the whole-input pool passes it on to all.
    torch.manual_seed(0)
    local = build_model("deeplabv3plus", {"width": 4, "image_pool_px": 64}).eval()
    torch.manual_seed(0)
    pooled = build_model("deeplabv3plus", {"width": 4}).eval()
    assert local.hparams["image_pool_px"] == 64 and local.aspp.pool_window == 5
    for px, features in ((16, 1), (32, 3), (48, 3), (256, 17), (272, 17)):  # odd, nearest
        model = build_model("deeplabv3plus", {"width": 4, "image_pool_px": px})
        assert model.aspp.pool_window == features
    x = torch.randn(1, 3, 128, 1024)
    y = x.clone()
    y[..., 864:] += 3.0
    with torch.inference_mode():
        for model, changes in ((local, False), (pooled, True)):
            a, b = model(x)[..., :64], model(y)[..., :64]
            assert (a - b).abs().max().item() > 1e-4 if changes else torch.equal(a, b)


def test_deeplab_output_stride_8():
    model = build_model("deeplabv3plus", {"width": 4, "output_stride": 8}).eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 96)).shape == (2, 2, 64, 96)


# --------------------------------------------------------------------------- registry


def test_registry_lists_and_builds():
    assert available_architectures() == ARCHITECTURES
    model = build_model("denseunet", {"width": 8})
    assert model.hparams["width"] == 8
    assert set(architecture_defaults("resunet")) == {
        "num_classes",
        "width",
        "depth",
        "blocks",
        "norm",
    }


def test_card_postprocess_round_trips_and_is_validated(tmp_path):
    card = read_card(next(iter(latest_cards(task="nuclei").values())))
    tuned = dataclasses.replace(card, postprocess={"fg_threshold": 0.6, "sigma_um": 1})
    want = {"fg_threshold": 0.6, "sigma_um": 1.0}
    assert ModelCard.from_dict(tuned.to_dict()).postprocess == want
    assert "postprocess" not in dataclasses.replace(card, postprocess=None).to_dict()
    for bad in ([0.6], {"fg_threshold": "high"}, {"fg_threshold": float("nan")}, {1: 0.5}):
        with pytest.raises(WeightsError, match="field `postprocess`"):
            ModelCard.from_dict({**tuned.to_dict(), "postprocess": bad}, source="c.json")


def test_builtin_tasks_known_before_torch_match_the_registered_ones():
    # Listing cards reads each card's task without importing the architectures.
    from napari_histo.models.registry import BUILTIN_TASKS

    for name, task in BUILTIN_TASKS.items():
        assert name in available_architectures(task)
    assert set(BUILTIN_TASKS) >= set(ARCHITECTURES) | {"hovernet"}


def test_reading_and_listing_cards_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_histo.models import latest_cards, read_card\n"
        "cards = latest_cards(task=None)\n"
        "tasks = sorted({read_card(p).task for p in cards.values()})\n"
        "print(len(cards), tasks, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, rest = out.stdout.split(" ", 1)
    assert int(count) >= 4
    assert rest.strip() == "['nuclei', 'segmentation'] False"


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ValueError, match=r"'unet'.*deeplabv3plus, denseunet, resunet"):
        build_model("unet", {})


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"unknown config key 'widht'.*accepted keys: num_classes"):
        build_model("resunet", {"widht": 8})


def test_register_rejects_clashes_and_bad_names():
    # Bundled names are taken even before the bundled classes load (they load lazily).
    with pytest.raises(ValueError, match="'resunet' is the name of a bundled architecture"):
        register_architecture("resunet")(nn.Identity)
    with pytest.raises(ValueError, match="already registered to DenseUNet"):
        register_architecture("denseunet")(build_model("resunet").__class__)
    with pytest.raises(ValueError, match="reserved"):
        register_architecture("torchscript")
    with pytest.raises(ValueError, match="must match"):
        register_architecture("Bad Name")


# --------------------------------------------------------------------------- cards


def _card_json(tmp_path, **changes) -> pathlib.Path:
    data = dataclasses.replace(make_card(), weights_file="w.safetensors", sha256="a" * 64).to_dict()
    data.update(changes)
    path = tmp_path / "card.json"
    path.write_text(json.dumps(data))
    return path


def test_card_round_trip(tmp_path):
    card = dataclasses.replace(
        make_card(parent_version="0.9"), weights_file="resunet-1.0.safetensors", sha256="0f" * 32
    )
    path = write_card(tmp_path / "resunet-1.0.json", card)
    again = read_card(path)
    assert again == card
    assert again.to_dict() == card.to_dict()
    assert again.classes == ("background", "tumor")
    assert again.normalisation["std"] == (0.15, 0.2, 0.15)
    assert [p.name for p in tmp_path.iterdir()] == ["resunet-1.0.json"]  # no temp file left


@pytest.mark.parametrize(
    "field", [f.name for f in dataclasses.fields(ModelCard) if f.name not in _OPTIONAL_FIELDS]
)
def test_card_missing_field_is_named(tmp_path, field):
    path = _card_json(tmp_path)
    data = json.loads(path.read_text())
    del data[field]
    path.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=rf"card\.json: missing field `{field}`"):
        read_card(path)


def test_optional_fields_may_be_missing(tmp_path):
    """Fields added after the format was fixed: older cards without them still load."""
    path = _card_json(tmp_path)
    data = json.loads(path.read_text())
    assert not set(_OPTIONAL_FIELDS) & set(data)  # left out while unset
    card = read_card(path)
    assert all(getattr(card, name) is None for name in _OPTIONAL_FIELDS)


BAD_VALUES = [
    ("name", 3),
    ("name", "../evil"),
    ("version", ""),
    ("parent_version", 1.0),
    ("architecture", ["resunet"]),
    ("config", [1, 2]),
    ("input_mpp", "abc"),
    ("input_mpp", 0),
    ("input_mpp", -0.5),
    ("input_mpp", True),
    ("patch_px", 100),
    ("patch_px", 256.0),
    ("normalisation", {"mean": [0.5, 0.5, 0.5]}),
    ("normalisation", {"mean": [0.5, 0.5], "std": [1, 1, 1]}),
    ("normalisation", {"mean": [0.5, 0.5, 0.5], "std": [1, 0, 1]}),
    ("classes", ["tumor"]),
    ("classes", ["a", "a"]),
    ("classes", "background,tumor"),
    ("training_data", ""),
    ("training_data", None),
    ("metrics", {"dice": "high"}),
    ("metrics", [0.5]),
    ("weights_file", "../w.safetensors"),
    ("weights_file", "/abs/w.safetensors"),
    ("weights_file", ""),
    ("sha256", "xyz"),
    ("sha256", ""),
    ("format", "pickle"),
    ("created", "yesterday"),
    ("created", 20240101),
    ("notes", None),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_card_bad_value_is_named(tmp_path, field, value):
    path = _card_json(tmp_path, **{field: value})
    with pytest.raises(WeightsError, match=rf"card\.json: field `{field}[`.]") as info:
        read_card(path)
    assert "\n" not in str(info.value)


def test_card_message_names_value(tmp_path):
    path = _card_json(tmp_path, input_mpp="abc")
    with pytest.raises(WeightsError) as info:
        read_card(path)
    assert str(info.value) == f"{path}: field `input_mpp` must be a number > 0, got 'abc'"


def test_card_architecture_must_agree_with_format(tmp_path):
    with pytest.raises(WeightsError, match="field `architecture`"):
        read_card(_card_json(tmp_path, format="torchscript"))


def test_card_unknown_field(tmp_path):
    with pytest.raises(WeightsError, match="unknown field `input_mmp`"):
        read_card(_card_json(tmp_path, input_mmp=0.5))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"hello", "not valid JSON"),
        (b'{"name": "resunet", "version": "1', "truncated JSON"),
        (b'[{"name": "resunet"}]', "must be a JSON object, got array"),
        (b'"resunet"', "must be a JSON object, got string"),
        (b'{"input_mpp": NaN}', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_card_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=match) as info:
        read_card(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_card_huge_file_refused(tmp_path):
    path = _card_json(tmp_path, notes="x" * (MAX_CARD_BYTES + 10))
    with pytest.raises(WeightsError, match="larger than 1024 kB"):
        read_card(path)


def test_card_missing_or_directory(tmp_path):
    with pytest.raises(WeightsError, match="no such model card"):
        read_card(tmp_path / "nope.json")
    with pytest.raises(WeightsError, match="is a directory"):
        read_card(tmp_path)


def test_card_constructor_validates():
    with pytest.raises(ValueError, match="field `patch_px`"):
        make_card(patch_px=100)
    with pytest.raises(ValueError, match="field `classes`"):
        make_card(classes=["only"])


def test_write_card_needs_weights(tmp_path):
    with pytest.raises(WeightsError, match="field `weights_file`"):
        write_card(tmp_path / "c.json", make_card())
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- weights


def test_save_load_round_trip(tmp_path, saved):
    assert saved.name == "resunet-1.0.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "resunet-1.0.json",
        "resunet-1.0.safetensors",
    ]
    loaded = load_model(saved)
    assert isinstance(loaded, LoadedModel)
    assert loaded.card_path == saved
    assert loaded.weights_path == tmp_path / "resunet-1.0.safetensors"
    assert loaded.card.sha256 == sha256_file(loaded.weights_path)
    assert not loaded.model.training
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = small_model().to(memory_format=torch.channels_last)(x)
        assert torch.equal(loaded.model(x), expected)
        torch.testing.assert_close(loaded.model(x), small_model()(x), atol=1e-5, rtol=1e-5)


def test_sha256_mismatch(saved):
    weights = saved.parent / read_card(saved).weights_file
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"sha256 mismatch \(file changed or corrupt\)"):
        load_model(saved)


def test_wrong_tensor_shapes_are_listed(tmp_path):
    # The file holds width 8; the card is edited to claim width 16.
    card_path = save_model(
        small_model(width=8), make_card(config={"width": 8, "depth": 2}), tmp_path
    )
    _rewrite_card(card_path, config={"width": 16, "depth": 2})
    pattern = r"wrong shape: stem\.0\.weight \(8, 3, 3, 3\) \(expected \(16, 3, 3, 3\)\)"
    with pytest.raises(WeightsError, match=pattern) as info:
        load_model(card_path)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "resunet-1.0.safetensors"))
    assert "more" in message and "\n" not in message


def test_missing_tensors_are_listed(saved):
    _rewrite_card(saved, config={"width": 4, "depth": 3})
    with pytest.raises(WeightsError, match=r"missing: down\.2"):
        load_model(saved)


def test_truncated_safetensors(saved):
    weights = saved.parent / read_card(saved).weights_file
    _replace_weights(saved, weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        WeightsError, match=r"safetensors: corrupt or truncated safetensors file"
    ) as info:
        load_model(saved)
    assert "\n" not in str(info.value)


def test_random_bytes(saved):
    payload = b"\x10" + np.random.default_rng(0).bytes(4095)
    _replace_weights(saved, payload)
    with pytest.raises(WeightsError, match=r"resunet-1\.0\.safetensors: corrupt or truncated"):
        load_model(saved)


def test_non_finite_weights_refused(tmp_path):
    model = small_model()
    with torch.no_grad():
        model.stem[0].weight[0, 0, 0, 0] = float("nan")
    path = save_model(model, make_card(), tmp_path)
    with pytest.raises(WeightsError, match=r"stem\.0\.weight holds NaN or infinite"):
        load_model(path)


def test_missing_weights_file(saved):
    (saved.parent / read_card(saved).weights_file).unlink()
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(saved)


class _Trap:
    """Unpickling this creates a file: proof that nothing was unpickled when absent."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_checkpoint_refused_as_card(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_model().state_dict(), path)
    with pytest.raises(WeightsError, match="unpickling can run arbitrary code") as info:
        load_model(path)
    message = str(info.value)
    assert "pickle" in message and "safetensors" in message and "torch.jit.save" in message


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.ckpt", "model.pkl"])
def test_card_naming_a_pickle_is_refused(saved, name):
    marker = saved.parent / "unpickled"
    path = saved.parent / name
    torch.save({"trap": _Trap(marker)}, path)
    _rewrite_card(saved, weights_file=name, sha256=sha256_file(path))
    with pytest.raises(WeightsError, match=r"pickle.*unpickling can run arbitrary code"):
        load_model(saved)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", ["zip", 2, 4])
def test_pickle_disguised_as_safetensors_is_refused(saved, protocol):
    marker = saved.parent / "unpickled"
    if protocol == "zip":
        path = saved.parent / "zip.safetensors"
        torch.save({"trap": _Trap(marker)}, path)
        payload = path.read_bytes()
    else:
        payload = pickle.dumps(_Trap(marker), protocol=protocol)
    _replace_weights(saved, payload)
    with pytest.raises(WeightsError, match="refused because unpickling can run arbitrary code"):
        load_model(saved)
    assert not marker.exists()


def test_torch_save_file_with_torchscript_card_is_refused(saved):
    marker = saved.parent / "unpickled"
    path = saved.parent / "fake.pt"
    torch.save({"trap": _Trap(marker)}, path)
    _rewrite_card(
        saved, architecture="torchscript", format="torchscript", config={},
        weights_file=path.name, sha256=sha256_file(path),
    )  # fmt: skip
    with pytest.raises(WeightsError, match=r"torch\.save checkpoint, not TorchScript.*unpickling"):
        load_model(saved)
    assert not marker.exists()


class TinyNet(nn.Module):
    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# torch 2.13 deprecates TorchScript in favour of torch.export; it still is the
# bring-your-own format the model card supports.
JIT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


@JIT_DEPRECATED
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_model_loads_and_runs(tmp_path, how):
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, x)
    card = make_card(name="byo", architecture="torchscript", format="torchscript", config={})
    path = save_model(scripted, card, tmp_path)
    loaded = load_model(path)
    assert loaded.card.format == "torchscript"
    assert loaded.weights_path.name == "byo-1.0.torchscript.pt"
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), net(x))


@JIT_DEPRECATED
def test_torchscript_with_wrong_class_count(tmp_path):
    scripted = torch.jit.script(TinyNet(classes=3))
    card = make_card(name="byo", architecture="torchscript", format="torchscript", config={})
    path = save_model(scripted, card, tmp_path)
    with pytest.raises(
        WeightsError, match=r"output shape \(1, 3, 64, 64\).*expected \(1, 2, 64, 64\)"
    ):
        load_model(path)


def test_torchscript_card_needs_script_module(tmp_path):
    card = make_card(name="byo", architecture="torchscript", format="torchscript", config={})
    with pytest.raises(ValueError, match=r"not a torch\.jit\.ScriptModule"):
        save_model(TinyNet(), card, tmp_path)


def test_saving_is_byte_reproducible(tmp_path):
    digests = {
        read_card(save_model(small_model(), make_card(), tmp_path / str(i))).sha256
        for i in range(5)
    }
    assert len(digests) == 1


def test_existing_version_is_not_overwritten(tmp_path, saved):
    before = sha256_file(tmp_path / "resunet-1.0.safetensors")
    with pytest.raises(WeightsError, match=r"already exists with different weights.*new `version`"):
        save_model(small_model(seed=1), make_card(), tmp_path)
    assert sha256_file(tmp_path / "resunet-1.0.safetensors") == before
    assert read_card(saved).sha256 == before
    # Saving the same weights again is harmless, and a new version is a new file.
    save_model(small_model(), make_card(), tmp_path)
    new = save_model(small_model(seed=1), make_card(version="1.1", parent_version="1.0"), tmp_path)
    assert load_model(new).card.parent_version == "1.0"
    assert [p.name for p in list_cards(tmp_path)] == ["resunet-1.0.json", "resunet-1.1.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_save_checks_model_against_card(tmp_path):
    with pytest.raises(ValueError, match=r"does not match card resunet-1\.0"):
        save_model(small_model(depth=3), make_card(), tmp_path)
    with pytest.raises(ValueError, match="num_classes 2 differs from 3 `classes`"):
        save_model(small_model(), make_card(classes=["a", "b", "c"]), tmp_path)


def test_load_checks_class_count(saved):
    _rewrite_card(saved, classes=["background", "tumor", "stroma"])
    with pytest.raises(WeightsError, match=r"output shape \(1, 2, 64, 64\)"):
        load_model(saved)


def test_default_models_dir_and_list_cards(tmp_path):
    import napari_histo

    # package data: found through importlib.resources, inside the installed package
    assert default_models_dir().parts[-2:] == ("resources", "models")
    assert default_models_dir().parent.parent == pathlib.Path(napari_histo.__file__).parent
    assert list_cards()  # the default ensemble ships with the package
    assert list_cards(tmp_path / "missing") == []
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "w.safetensors").write_bytes(b"")
    assert [p.name for p in list_cards(tmp_path)] == ["a.json", "b.json"]
    with pytest.raises(NotADirectoryError):
        list_cards(tmp_path / "w.safetensors")


def test_latest_cards_picks_newest_version_and_warns_on_bad_cards(tmp_path):
    for seed, version in enumerate(["1.9", "1.10", "1.2"]):
        save_model(small_model(seed), make_card(version=version), tmp_path)
    save_model(small_model(), make_card(name="other", version="0.1"), tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.warns(UserWarning, match=r"broken\.json: truncated JSON"):
        latest = latest_cards(tmp_path)
    assert latest == {
        "other": tmp_path / "other-0.1.json",
        "resunet": tmp_path / "resunet-1.10.json",
    }


def test_bad_device(saved):
    with pytest.raises(ValueError, match="`device`"):
        load_model(saved, device="gpu-please")
