"""Large-tile inference: measured receptive margins, blocks, and results that do not
depend on how the slide is cut (real synthetic slide, real torch models)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from napari_histo.errors import HistoError
from napari_histo.inference.blocks import (
    PIECE_ALIGN_PX,
    block_steps,
    computed_px,
    lattice_centres,
    local_pieces,
    member_cores,
    patch_rows,
)
from napari_histo.inference.engine import EngineConfig, infer_slide, plan_inference, run
from napari_histo.inference.plan import block_need, plan_blocks
from napari_histo.models import ModelCard, build_model, load_model, read_card, save_model
from napari_histo.models.receptive import he_texture, measure_margin, with_measured_margin
from napari_histo.synthetic import write_synthetic_slide
from napari_histo.tiling import make_grid


def make_member(directory, architecture, seed):
    torch.manual_seed(seed)
    model = build_model(architecture, {"width": 4})
    card = ModelCard(
        name=f"{architecture}-large", version="0.1", architecture=architecture,
        config={"width": 4, "num_classes": 2}, input_mpp=2.0, patch_px=128,
        normalisation={"mean": [0.8, 0.6, 0.75], "std": [0.15, 0.2, 0.15]},
        classes=("background", "tumor"), training_data="random initialisation (tests)",
    )  # fmt: skip
    return save_model(model, card, directory)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    return write_synthetic_slide(root / "s.svs", 4096, seed=2001, workers=1).path


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    local = make_member(root, "resunet", 1)
    with_measured_margin(local)
    pooled = make_member(root, "deeplabv3plus", 2)  # no margin in its card: patch-blended
    return local, pooled


class GlobalContext(torch.nn.Module):
    """Per-pixel logits plus the mean over the whole input: not local at all."""

    def __init__(self) -> None:
        super().__init__()
        self.pixel = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.context = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.pixel(x) + 20 * self.context(x).mean(dim=(2, 3), keepdim=True)


def probability(slide, cards, out, **config):
    out.mkdir(parents=True, exist_ok=True)
    members = [load_model(c) for c in cards]
    result = run(infer_slide(slide, members, config=EngineConfig(**config), out_dir=out))
    return np.asarray(result.run.array("probability")[...]), result


def test_margins_are_measured_and_stored(cards):
    from napari_histo.models import LoadedModel

    local = read_card(cards[0])
    # A U-Net sees a bounded neighbourhood, written into its card.
    assert local.receptive_margin_px is not None and 0 < local.receptive_margin_px < 128
    assert local.receptive_margin_px % 16 == 0
    assert measure_margin(load_model(cards[0])) == local.receptive_margin_px  # deterministic
    torch.manual_seed(0)
    pooled = LoadedModel(model=GlobalContext().eval(), card=local, card_path=cards[0])
    assert measure_margin(pooled) is None  # what happens outside the crop changes every pixel


@pytest.fixture(scope="module")
def windowed_deeplab(tmp_path_factory):
    """The shipped DeepLabV3+ (v2.1) with its image pooling over a 256-px window."""
    import json
    import shutil

    from napari_histo.models import latest_cards

    shipped = latest_cards()["deeplabv3plus"]
    root = tmp_path_factory.mktemp("windowed")
    fields = json.loads(shipped.read_text())
    fields["config"]["image_pool_px"] = 256
    copy = root / shipped.name
    copy.write_text(json.dumps(fields))
    shutil.copy(shipped.with_name(fields["weights_file"]), root)
    with_measured_margin(copy)
    return copy


def test_deeplab_is_local_with_a_pooling_window(windowed_deeplab):
    # Pooling its whole input (as the shipped card does) it has no margin; pooling
    # a 256-px window around each position its output depends on 208 px around.
    from napari_histo.models import latest_cards

    assert "image_pool_px" not in read_card(latest_cards()["deeplabv3plus"]).config
    assert measure_margin(load_model(latest_cards()["deeplabv3plus"])) is None
    assert read_card(windowed_deeplab).receptive_margin_px == 208


def test_members_that_keep_their_speed_run_on_larger_pieces():
    from napari_histo.models import build_model

    unet, deeplab = build_model("resunet", {"width": 4}), build_model("deeplabv3plus", {})
    cpu, gpu = torch.device("cpu"), torch.device("meta")
    assert member_cores([unet, deeplab], None, cpu) == (512, 1024)
    assert member_cores([unet, deeplab], None, gpu) == (None, None)
    assert member_cores([unet, deeplab], 256, cpu) == (256, 256)  # the user's choice, for all
    # Per-member cores count each member's own pieces.
    need = np.zeros((1024, 1024), bool)
    need[100:900, 100:900] = True
    centres = lattice_centres(need.shape, (0, 0), 256)
    mixed = computed_px(need, centres, [80, 96], 256, 128, (256, None))
    alone = (
        computed_px(need, centres, [80], 256, 128, 256),
        computed_px(need, centres, [96], 256, 128, None),
    )
    assert mixed == pytest.approx(sum(alone) / 2)
    assert alone[1] == (1024 - 2 * 128 + 2 * 96) ** 2  # one piece: the interior, plus margin
    assert block_steps(need, centres, [80, 96], 256, 128, (256, None)) == (
        len(local_pieces(need, 128, 256)) + 1
    )


def test_card_field_is_checked_and_optional(cards):
    card = read_card(cards[0])
    fields = {**card.to_dict()}
    for bad in (-16, 20, "64", True):
        with pytest.raises(ValueError, match="receptive_margin_px"):
            ModelCard(**{**fields, "receptive_margin_px": bad})
    fields.pop("receptive_margin_px")
    assert ModelCard.from_dict(fields).receptive_margin_px is None  # older cards load


def test_texture_is_deterministic_rgb():
    a, b = he_texture(96, 3), he_texture(96, 3)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert a.std() > 10  # structure, not a flat colour


def test_blocks_cover_every_tile_once_with_the_margin():
    grid = make_grid((0, 0, 5000, 3000), slide_mpp=1.0, model_mpp=1.0, tile_px=256, overlap=0.0)
    todo = np.arange(len(grid))
    blocks = plan_blocks(grid, todo, margin_px=96, max_px=1024, align=128)
    seen = np.concatenate([b.tiles for b in blocks])
    assert sorted(seen.tolist()) == todo.tolist()
    for b in blocks:
        assert b.x % 128 == 0 and b.y % 128 == 0 and b.w % 128 == 0 and b.h % 128 == 0
        assert max(b.w, b.h) <= 1024 + 128
        xs, ys = grid.origins[b.tiles].T
        assert xs.min() - b.x >= 96 and b.x + b.w - (xs.max() + 256) >= 96
        assert ys.min() - b.y >= 96 and b.y + b.h - (ys.max() + 256) >= 96
        need = block_need(b, grid)
        for x, y in grid.origins[b.tiles]:
            assert need[y - b.y : y - b.y + 256, x - b.x : x - b.x + 256].all()
        assert need.sum() <= len(b.tiles) * 256 * 256


def test_pieces_cover_what_is_needed_and_skip_glass():
    # A block of 1024 with a 64-px margin; tissue is an L-shaped blob and a speck.
    need = np.zeros((1024, 1024), bool)
    need[100:700, 90:300] = True
    need[600:700, 90:900] = True
    need[950:960, 950:960] = True
    found = local_pieces(need, 64, 256)
    covered = np.zeros_like(need)
    for y, x, h, w in found:
        assert y % PIECE_ALIGN_PX == 0 and x % PIECE_ALIGN_PX == 0
        assert h % PIECE_ALIGN_PX == 0 and w % PIECE_ALIGN_PX == 0
        assert 0 < h <= 256 and 0 < w <= 256 and y >= 64 and x >= 64
        assert y + h <= 1024 - 64 and x + w <= 1024 - 64
        assert need[y : y + h, x : x + w].any()  # no piece on glass alone
        assert not covered[y : y + h, x : x + w].any()  # no pixel computed twice
        covered[y : y + h, x : x + w] = True
    inner = np.zeros_like(need)
    inner[64:-64, 64:-64] = True
    assert covered[need & inner].all()
    # Fitted pieces compute far less than the whole squares they come from.
    whole = len(found) * (256 + 2 * 80) ** 2
    assert computed_px(need, None, [80], 128, 64, 256) < 0.7 * whole
    # A torch mask with a batch of transforms gives the union's pieces.
    stacked = torch.from_numpy(np.stack([need, need[::-1].copy()]))
    both = local_pieces(stacked, 64, 256)
    assert local_pieces(need | need[::-1], 64, 256) == both
    assert local_pieces(np.zeros((512, 512), bool), 64, 256) == []


def test_pooled_patches_sit_on_one_lattice_whatever_the_block():
    # Two blocks at different offsets from the region's origin: the patches a pooled
    # member runs are the same slide positions, stride three quarters of the patch.
    patch, stride = 256, 192
    seen = []
    for oy, ox in ((0, 0), (128, 384)):
        need = np.zeros((1280, 1536), bool)
        need[256:-256, 256:-256] = True
        rows = patch_rows(need, lattice_centres(need.shape, (oy, ox), patch), patch)
        ys = [y + oy for y, _ in rows]
        xs = sorted({x + ox for _, row in rows for x in row})
        assert all(v % stride == 0 for v in ys + xs)
        assert all(0 <= y - oy and y - oy + patch <= 1280 for y in ys)
        seen.append((set(ys), set(xs)))
        # Every needed pixel lies in some patch.
        covered = np.zeros_like(need)
        for y, row in rows:
            for x in row:
                covered[y : y + patch, x : x + patch] = True
        assert covered[need].all()
    # Flipped and rotated with the block (augmentation), the centres give the
    # flipped patches.
    need = np.ones((768, 1024), bool)
    centres = lattice_centres(need.shape, (64, 0), patch)
    rows = patch_rows(need, centres, patch)
    flipped = patch_rows(need[:, ::-1], centres[:, ::-1], patch)
    assert [y for y, _ in flipped] == [y for y, _ in rows]
    assert sorted(1024 - patch - x for x in flipped[0][1]) == rows[0][1]
    turned = patch_rows(need.T, centres.T, patch)
    assert [y for y, _ in turned] == rows[0][1] and turned[0][1] == [y for y, _ in rows]
    # An odd patch has a one-pixel centre.
    odd = patch_rows(np.ones((300, 300), bool), lattice_centres((300, 300), (0, 0), 101), 101)
    assert [y for y, _ in odd] == [0, 76, 152] and odd[0][1] == [0, 76, 152]


def test_batched_transforms_each_run_their_own_lattice():
    # Small blocks batch the TTA transforms into one forward: each transform's
    # patches must be those of its own (flipped) lattice, as when run alone.
    from napari_histo.inference.blocks import member_forwards
    from napari_histo.inference.ensemble import apply_dihedral
    from napari_histo.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv3plus", {"width": 4}).eval()
    (forward,) = member_forwards([model], [None], 64, 64, None)
    h, w = 320, 384
    need = np.zeros((h, w), bool)
    need[64:-64, 64:-64] = True
    centres = lattice_centres((h, w), (32, 96), 64)  # lattice not symmetric in the block
    x = torch.cat(
        [torch.randn(1, 3, h, w), torch.from_numpy(np.stack([need, centres]))[None].float()], 1
    )
    items = [apply_dihedral(x, t) for t in (0, 2, 4)]  # even transforms: same shape
    with torch.inference_mode():
        batched = forward(torch.cat(items))
        alone = torch.cat([forward(item) for item in items])
    assert torch.allclose(batched, alone, atol=1e-5)
    stack = np.stack([i[0, 3].numpy() > 0.5 for i in items])
    lattices = np.stack([i[0, 4].numpy() > 0.5 for i in items])
    assert block_steps(stack, lattices, [None], 64, 64, None) == sum(
        len(patch_rows(n, c, 64)) for n, c in zip(stack, lattices, strict=True)
    )


def test_large_tiles_use_cells_of_half_the_patch(slide, cards, tmp_path):
    members = [load_model(c) for c in cards]
    large = plan_inference(slide, members, config=EngineConfig(tiling="large"), out_dir=tmp_path)
    patch = plan_inference(slide, members, config=EngineConfig(tiling="patch"), out_dir=tmp_path)
    assert large.grid.tile_px == large.geometry.cell_px == patch.geometry.cell_px == 64
    # The pooled member's stride is part of the run: a run at another stride is not resumed.
    assert large.run.settings["tiling"]["pooled_stride"] == 0.75
    assert large.computed_px < len(patch.todo) * 128**2


def test_large_tiles_need_a_margin(slide, cards, tmp_path):
    members = [load_model(cards[1])]  # pooled only
    with pytest.raises(HistoError, match="receptive_margin_px"):
        plan_inference(slide, members, config=EngineConfig(tiling="large"), out_dir=tmp_path)
    auto = plan_inference(slide, members, config=EngineConfig(tiling="auto"), out_dir=tmp_path)
    assert auto.blocks is None  # falls back to patch tiles


def test_results_do_not_depend_on_the_cut_and_match_patches(slide, cards, tmp_path):
    # Many small blocks and pieces against one block: seams would show as differences.
    small, res = probability(slide, cards, tmp_path / "a", tiling="large", large_tile_px=512,
                             sub_tile_px=64)  # fmt: skip
    one, _ = probability(slide, cards, tmp_path / "b", tiling="large", large_tile_px=4096,
                         sub_tile_px=512)  # fmt: skip
    assert res.run.complete and res.tiles_run > 0
    tissue = small > 0
    assert np.abs(small - one)[tissue].max() <= 0.02
    assert np.abs(small - one)[tissue].mean() <= 1e-3
    (tmp_path / "c").mkdir()
    plan = plan_inference(slide, [load_model(c) for c in cards], config=EngineConfig(
        tiling="large", large_tile_px=512, sub_tile_px=64), out_dir=tmp_path / "c")  # fmt: skip
    assert len(plan.blocks) > 1
    # Against today's blended patches: the same picture (the local member now sees more
    # context at patch edges, so a few pixels move, none by much on average).
    patch, _ = probability(slide, cards, tmp_path / "d", tiling="patch")
    both = tissue & (patch > 0)
    assert np.abs(small - patch)[both].mean() <= 0.01  # (Dice: bench infer, trained models)


def test_windowed_deeplab_has_no_seams_in_large_tiles(slide, windowed_deeplab, tmp_path):
    # Its measured margin (208 px) makes pieces exact: small blocks and pieces give
    # the values of one block, so no seam can show where they meet.
    # float32: the exactness of the pieces (bfloat16 rounds inputs of other sizes
    # differently, up to about 0.03 here: test_mixed_precision_agrees_with_float32).
    shipped = [windowed_deeplab]
    cut, res = probability(slide, shipped, tmp_path / "a", tiling="large", large_tile_px=1024,
                           sub_tile_px=256, amp=False)  # fmt: skip
    plan = plan_inference(slide, [load_model(shipped[0])], config=EngineConfig(
        tiling="large", large_tile_px=1024, sub_tile_px=256), out_dir=tmp_path)  # fmt: skip
    assert len(plan.blocks) > 1 and plan.member_margins == (208,)
    whole, _ = probability(slide, shipped, tmp_path / "b", tiling="large", large_tile_px=4096,
                           sub_tile_px=4096, amp=False)  # fmt: skip
    tissue = cut > 0
    assert res.run.complete and tissue.any()
    assert np.abs(cut - whole)[tissue].max() <= 0.02
    assert np.abs(cut - whole)[tissue].mean() <= 1e-3


def test_large_tiles_do_not_depend_on_batch_size_or_threads(slide, cards, tmp_path):
    # The engine's promise (≤ 1e-5 on a CPU) holds for large tiles too: the batch
    # size only groups the pooled member's patches; reader and torch threads.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the block's model thread takes the caller's count
        a, _ = probability(slide, cards, tmp_path / "a", tiling="large", batch_size=1,
                           read_threads=1, tta=2)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    b, _ = probability(slide, cards, tmp_path / "b", tiling="large", batch_size=4,
                       read_threads=2, tta=2)  # fmt: skip
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_large_tile_reports_progress_while_it_runs(slide, cards, tmp_path, monkeypatch):
    from napari_histo.inference import engine

    monkeypatch.setattr(engine, "BLOCK_PROGRESS_S", 0.005)
    members = [load_model(c) for c in cards]
    config = EngineConfig(tiling="large", large_tile_px=4096)
    generator = infer_slide(slide, members, config=config, out_dir=tmp_path)
    events = []
    result = run(generator, events.append)
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == result.tiles_total
    interim = [e for e in events if not e.cells]
    assert interim and any(0 < e.done for e in interim)
    assert all(e.done < result.tiles_total for e in interim)  # the end only with the cells
    assert result.run.complete


def test_cancel_stops_inside_a_large_tile(slide, cards, tmp_path, monkeypatch):
    from napari_histo.inference import engine

    monkeypatch.setattr(engine, "BLOCK_PROGRESS_S", 0.005)
    members = [load_model(c) for c in cards]
    config = EngineConfig(tiling="large", large_tile_px=4096)  # one block
    cancel = threading.Event()
    generator = infer_slide(slide, members, config=config, out_dir=tmp_path, cancel=cancel)
    assert not next(generator).cells  # the block is still running
    cancel.set()
    stopped = run(generator)
    assert stopped.cancelled and stopped.tiles_run == 0
    assert not stopped.run.done.all()  # only the glass cells, marked at planning
    resumed = run(infer_slide(slide, members, config=config, out_dir=tmp_path))
    assert resumed.run.complete and not resumed.cancelled
    assert resumed.tiles_run == resumed.tiles_total


class Slow(torch.nn.Module):
    """A real member that takes 0.2 s a forward: a large tile of many pieces takes long."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        time.sleep(0.2)
        return self.model(x)


def test_stopping_the_run_stops_the_large_tile_at_once(slide, cards, tmp_path, monkeypatch):
    # Ctrl-C (an exception thrown into the generator) or closing it while a large tile
    # runs must not wait for the tile's remaining pieces (here about 10 s).
    import dataclasses

    from napari_histo.inference import engine

    monkeypatch.setattr(engine, "BLOCK_PROGRESS_S", 0.005)
    loaded = load_model(cards[0])
    members = [dataclasses.replace(loaded, model=Slow(loaded.model))]
    config = EngineConfig(tiling="large", large_tile_px=4096, sub_tile_px=64)
    for stop in ("throw", "close"):
        (tmp_path / stop).mkdir()
        generator = infer_slide(slide, members, config=config, out_dir=tmp_path / stop)
        assert not next(generator).cells  # inside the tile
        start = time.monotonic()
        if stop == "throw":
            with pytest.raises(KeyboardInterrupt):
                generator.throw(KeyboardInterrupt)
        else:
            generator.close()
        assert time.monotonic() - start < 2.0
        assert not any(t.name.startswith("histo-model") for t in threading.enumerate())


def test_large_tiles_cancel_and_resume(slide, cards, tmp_path):
    members = [load_model(c) for c in cards]
    config = EngineConfig(tiling="large", large_tile_px=512, sub_tile_px=64)
    cancel = threading.Event()
    generator = infer_slide(slide, members, config=config, out_dir=tmp_path, cancel=cancel)
    next(generator)
    cancel.set()
    first = run(generator)
    assert first.cancelled
    resumed = run(infer_slide(slide, members, config=config, out_dir=tmp_path))
    assert resumed.run.complete and resumed.tiles_run < resumed.tiles_total
    clean, _ = probability(slide, cards, tmp_path / "clean", tiling="large", large_tile_px=512,
                           sub_tile_px=64)  # fmt: skip
    got = np.asarray(resumed.run.array("probability")[...])
    assert np.abs(got - clean).max() <= 1e-5


class Recorder(torch.nn.Module):
    """A real member that notes the shape of every input it is given."""

    def __init__(self, model: torch.nn.Module, seen: list) -> None:
        super().__init__()
        self.model, self.seen = model, seen

    def forward(self, x):
        self.seen.append((self, tuple(x.shape)))
        return self.model(x)


@pytest.mark.parametrize("tta", [1, 4])
def test_bench_times_the_forwards_the_engine_makes(slide, cards, tmp_path, tta):
    # bench infer's efficiency divides by the bare forwards of these shapes: they
    # must be the engine's own, transforms (batched, each with its own lattice) included.
    import dataclasses
    from collections import Counter

    from napari_histo.bench.infer import _block_forward_shapes

    seen: list = []
    members = []
    for card in cards:
        loaded = load_model(card)
        members.append(dataclasses.replace(loaded, model=Recorder(loaded.model, seen)))
    config = EngineConfig(tiling="large", large_tile_px=512, sub_tile_px=64, tta=tta)
    plan = plan_inference(slide, members, config=config, out_dir=tmp_path)
    expected = Counter(_block_forward_shapes(plan))
    assert len(plan.blocks) > 1 and len(expected) > 2
    from napari_histo.inference.engine import execute_inference

    result = run(execute_inference(plan))
    assert result.run.complete
    assert Counter(seen) == expected


def test_mixed_precision_agrees_with_float32(slide, cards, tmp_path):
    # amp (the default) is bfloat16 on a CPU that has it in hardware: about 2x faster
    # forwards, probabilities within a few hundredths of float32, recorded in the run.
    from napari_histo.inference.plan import autocast_dtype, cpu_has_native_bfloat16

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, amp=False) is None
    assert autocast_dtype(torch.device("cuda"), amp=True) == torch.float16
    native = cpu_has_native_bfloat16()
    assert autocast_dtype(cpu, amp=True) == (torch.bfloat16 if native else None)
    for tiling in ("large", "patch"):
        out = tmp_path / tiling
        mixed, res = probability(slide, cards, out, tiling=tiling, device="cpu")
        exact, ref = probability(slide, cards, out, tiling=tiling, device="cpu", amp=False)
        # One store, one run per precision: float32 does not resume the bfloat16 run.
        assert (ref.run.run_id != res.run.run_id) == native
        assert ref.tiles_run == (ref.tiles_total if native else 0)
        assert ref.run.group.attrs["precision"] == ref.precision == "float32"
        assert res.run.group.attrs["precision"] == res.precision
        assert res.precision == ("bfloat16" if native else "float32")
        tissue = exact > 0
        diff = np.abs(mixed - exact)[tissue]
        assert diff.max() <= 0.05 and diff.mean() <= 2e-3
        assert (diff.max() > 0) == native  # bfloat16 did run where the CPU has it


class AutocastProbe(torch.nn.Module):
    """A real member that notes whether CPU autocast is on, and to what, when it runs."""

    def __init__(self, model: torch.nn.Module, seen: list) -> None:
        super().__init__()
        self.model, self.seen = model, seen

    def forward(self, x):
        on = torch.is_autocast_enabled("cpu")
        self.seen.append((on, torch.get_autocast_dtype("cpu"), threading.current_thread().name))
        return self.model(x)


def test_bfloat16_reaches_the_forwards_on_whichever_thread_runs_them(
    slide, cards, tmp_path, monkeypatch
):
    # Autocast is per thread: large tiles run their forwards on the model thread.
    # Forced on (emulated where the CPU lacks it) so every machine checks the path.
    import dataclasses

    from napari_histo.inference import plan as plan_module

    monkeypatch.setattr(plan_module, "cpu_has_native_bfloat16", lambda: True)
    seen: list = []
    members = []
    for card in cards:
        loaded = load_model(card)
        members.append(dataclasses.replace(loaded, model=AutocastProbe(loaded.model, seen)))
    region = (0, 0, 2048, 2048)
    for tiling in ("large", "patch"):
        seen.clear()
        config = EngineConfig(tiling=tiling, device="cpu", large_tile_px=512, sub_tile_px=64)
        result = run(infer_slide(slide, members, region=region, config=config,
                                 out_dir=tmp_path))  # fmt: skip
        assert result.precision == result.run.group.attrs["precision"] == "bfloat16"
        assert result.run.settings["precision"] == "bfloat16"
        assert seen and all(on and dtype == torch.bfloat16 for on, dtype, _ in seen)
        threads = {name for *_, name in seen}
        assert all(n.startswith("histo-model") for n in threads) == (tiling == "large")
    # float32 switches off an autocast the caller's thread has on.
    seen.clear()
    config = EngineConfig(tiling="patch", device="cpu", amp=False)
    with torch.autocast("cpu", torch.bfloat16):
        result = run(infer_slide(slide, members, region=region, config=config,
                                 out_dir=tmp_path))  # fmt: skip
    assert result.precision == "float32" and "precision" not in result.run.settings
    assert seen and not any(on for on, *_ in seen)
