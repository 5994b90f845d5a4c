"""Tile grids, blend weights and cell-wise stitching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_histo.tiling import (
    WEIGHT_FLOOR,
    Stitcher,
    TileGrid,
    blend_weights,
    make_grid,
    order_centre_out,
)

SLIDE_W, SLIDE_H = 3000, 2000  # level-0 px of an imaginary slide

# (region_l0, slide_mpp, model_mpp, tile_px): multiples and non-multiples of the tile
# and stride, a region smaller than a tile, regions touching the right/bottom edges.
CASES = [
    ((0, 0, 512, 512), 0.5, 0.5, 64),
    ((10, 20, 397, 211), 0.5, 0.5, 64),
    ((7, 3, 40, 25), 0.5, 0.5, 64),  # smaller than one tile
    ((SLIDE_W - 700, SLIDE_H - 333, 700, 333), 0.25, 1.0, 48),  # right/bottom corner
    ((0, SLIDE_H - 1001, SLIDE_W, 1001), 0.25, 0.5, 80),  # full width, bottom edge
    ((101, 57, 1234, 77), 0.5, 1.0, 32),  # scale 2, one tile high
]
OVERLAPS = [0.0, 0.25, 0.5, 0.75]


def _run(grid: TileGrid, model, channels: int = 1, order=None, **kwargs) -> np.ndarray:
    stitcher = Stitcher(grid, channels, **kwargs)
    for i in range(len(grid)) if order is None else order:
        stitcher.add(int(i), model(grid, int(i)))
    return stitcher.result()


def _identity(image: np.ndarray):
    """Model returning the crop of `image` (C, H, W), region-relative, under each tile."""

    def model(grid: TileGrid, i: int) -> np.ndarray:
        x, y = grid.origins[i] - np.asarray(grid.region[:2])
        return image[:, y : y + grid.tile_px, x : x + grid.tile_px]

    return model


def _image_for(grid: TileGrid, channels: int, rng: np.random.Generator) -> np.ndarray:
    _, _, w, h = grid.region
    return rng.random((channels, h + grid.tile_px, w + grid.tile_px)).astype(np.float32)


def _coverage(grid: TileGrid) -> np.ndarray:
    x0, y0, w, h = grid.region
    count = np.zeros((h, w), np.int32)
    for x, y in grid.origins:
        count[max(0, y - y0) : y - y0 + grid.tile_px, max(0, x - x0) : x - x0 + grid.tile_px] += 1
    return count


# -- grid geometry --------------------------------------------------------------
@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("case", CASES)
def test_grid_covers_region(case, overlap):
    region_l0, slide_mpp, model_mpp, tile_px = case
    grid = make_grid(
        region_l0, slide_mpp=slide_mpp, model_mpp=model_mpp, tile_px=tile_px, overlap=overlap
    )
    scale = model_mpp / slide_mpp
    x0, y0, w, h = grid.region
    assert grid.scale == scale
    assert grid.stride_px == max(1, round(tile_px * (1 - overlap)))
    # The model-frame region contains the level-0 region.
    assert x0 * scale <= region_l0[0] and y0 * scale <= region_l0[1]
    assert (x0 + w) * scale >= region_l0[0] + region_l0[2]
    assert (y0 + h) * scale >= region_l0[1] + region_l0[3]
    assert (_coverage(grid) >= 1).all()
    ox, oy = grid.origins[:, 0], grid.origins[:, 1]
    assert ox.min() == x0 and oy.min() == y0
    if w >= tile_px:  # last column ends exactly at the region edge, none past it
        assert (ox + tile_px).max() == x0 + w
    else:
        assert (ox == x0).all()
    if h >= tile_px:
        assert (oy + tile_px).max() == y0 + h
    else:
        assert (oy == y0).all()
    # Tiles stay inside the slide unless the region is smaller than a tile.
    right = max(grid.tile_region_l0(i)[0] + grid.tile_region_l0(i)[2] for i in range(len(grid)))
    if w >= tile_px:
        assert right <= region_l0[0] + region_l0[2] + scale
    assert len({tuple(o) for o in grid.origins.tolist()}) == len(grid)


def test_grid_example_layout():
    grid = make_grid((0, 0, 250, 150), slide_mpp=1, model_mpp=1, tile_px=128, overlap=0.5)
    assert grid.region == (0, 0, 250, 150)
    assert grid.origins.tolist() == [[0, 0], [64, 0], [122, 0], [0, 22], [64, 22], [122, 22]]
    assert grid.cell_shape == (3, 4)
    assert grid.cells_for_tile(5) == [(r, c) for r in range(3) for c in (1, 2, 3)]
    assert grid.tiles_for_cell(0, 0).tolist() == [0, 3]
    assert grid.cell_slices(2, 3) == (slice(128, 150), slice(192, 250))
    with pytest.raises(IndexError, match=r"cell \(3, 0\) outside the 3 x 4 cell grid"):
        grid.tiles_for_cell(3, 0)


def test_small_region_gets_one_tile_at_its_origin():
    grid = make_grid((400, 800, 60, 30), slide_mpp=0.25, model_mpp=0.5, tile_px=64)
    assert grid.region == (200, 400, 30, 15)
    assert grid.origins.tolist() == [[200, 400]]
    assert grid.cell_shape == (1, 1)
    assert grid.tile_region_l0(0) == (400, 800, 128, 128)


def test_tile_region_l0():
    grid = make_grid((1000, 2000, 2000, 2000), slide_mpp=0.25, model_mpp=1.0, tile_px=256)
    assert grid.scale == 4.0
    assert grid.tile_region_l0(0) == (1000, 2000, 1024, 1024)
    assert grid.tile_region_l0(1) == (1000 + 512, 2000, 1024, 1024)
    with pytest.raises(IndexError, match=r"`index` must be in \[0, 8\], got 9"):
        grid.tile_region_l0(9)


def test_grid_is_frozen_and_read_only():
    grid = make_grid((0, 0, 500, 500), slide_mpp=1, model_mpp=1, tile_px=64)
    with pytest.raises(AttributeError):
        grid.tile_px = 32
    with pytest.raises(ValueError, match="read-only"):
        grid.origins[0, 0] = 5


def test_cells_and_tiles_agree():
    grid = make_grid((3, 5, 517, 301), slide_mpp=1, model_mpp=1, tile_px=64, overlap=0.75)
    rows, cols = grid.cell_shape
    touched = {(r, c): [] for r in range(rows) for c in range(cols)}
    for i in range(len(grid)):
        for cell in grid.cells_for_tile(i):
            touched[cell].append(i)
    for (r, c), tiles in touched.items():
        assert grid.tiles_for_cell(r, c).tolist() == tiles
        assert grid.tile_counts[r, c] == len(tiles) > 0
    assert grid.covered_cells().all()
    cells = np.zeros(grid.cell_shape, bool)
    cells[2, 3] = cells[rows - 1, cols - 1] = True
    expected = sorted(set(touched[(2, 3)]) | set(touched[(rows - 1, cols - 1)]))
    assert grid.tiles_touching(cells).tolist() == expected


def test_order_centre_out():
    grid = make_grid((0, 0, 640, 640), slide_mpp=0.5, model_mpp=1.0, tile_px=64, overlap=0)
    assert len(grid) == 25
    order = order_centre_out(grid, (320, 320))  # level 0: the centre of tile 12
    assert order[0] == 12
    assert sorted(order.tolist()) == list(range(25))
    assert order[1:5].tolist() == [7, 11, 13, 17]  # equidistant: by index
    centres = (grid.origins + 32) * grid.scale
    dist = np.hypot(*(centres - 320).T)[order]
    assert (np.diff(dist) >= 0).all()
    assert order_centre_out(grid, (0, 0))[0] == 0


@pytest.mark.parametrize("seed", range(6))
def test_order_centre_out_finishes_the_cell_under_the_point_first(seed):
    # A viewport run shows its first result after one batch of four tiles,
    # wherever the point lies (also next to a row of tile centres).
    rng = np.random.default_rng(seed)
    grid = make_grid((0, 0, 1600, 1200), slide_mpp=0.5, model_mpp=1.0, tile_px=64, overlap=0.5)
    point = (float(rng.uniform(200, 1400)), float(rng.uniform(200, 1000)))
    if seed == 0:
        point = (2 * (5 * 32 + 32) + 0.5, 2 * (7 * 32 + 32) + 9.0)  # a tile centre's row
    order = order_centre_out(grid, point)
    assert sorted(order.tolist()) == list(range(len(grid)))
    stitcher = Stitcher(grid, 1)
    for index in order[:4].tolist():
        stitcher.add(index, np.zeros((1, 64, 64), np.float32))
    cells = [(r, c) for r, c, _ in stitcher.pop_final_cells()]
    s = grid.stride_px * grid.scale  # cell side, level-0 px
    assert cells == [(int(point[1] // s), int(point[0] // s))]
    # Later tiles keep finishing cells near the point: a batch of four always does.
    gaps, since = [], 0
    for index in order[4:].tolist():
        stitcher.add(index, np.zeros((1, 64, 64), np.float32))
        since = 0 if stitcher.pop_final_cells() else since + 1
        gaps.append(since)
    assert max(gaps) < 4


# -- blend weights ----------------------------------------------------------------
@pytest.mark.parametrize("overlap", [*OVERLAPS, 0.9])
@pytest.mark.parametrize("tile_px", [16, 64, 101])
def test_blend_weights(tile_px, overlap):
    w = blend_weights(tile_px, overlap)
    assert w.dtype == np.float32 and w.shape == (tile_px, tile_px)
    assert w.min() >= np.float32(WEIGHT_FLOOR**2) and w.max() <= 1
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    if overlap == 0:
        assert (w == 1).all()
    else:
        assert w[tile_px // 2, tile_px // 2] >= 0.95
        assert w[0, 0] < 0.1
    # Where the ramp spans the whole overlap, neighbours one stride apart sum to ~1.
    stride = max(1, round(tile_px * (1 - overlap)))
    if 0 < tile_px - stride <= tile_px / 2:
        axis = np.sqrt(np.diag(w).astype(np.float64))  # the 1-D profile
        total = axis[stride:] + axis[: tile_px - stride]
        np.testing.assert_allclose(total, 1.0, atol=2e-3)


# -- stitching ----------------------------------------------------------------------
@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("case", CASES)
def test_constant_model_stitches_to_constant(case, overlap):
    region_l0, slide_mpp, model_mpp, tile_px = case
    grid = make_grid(
        region_l0, slide_mpp=slide_mpp, model_mpp=model_mpp, tile_px=tile_px, overlap=overlap
    )
    values = np.array([0.7, -3.25], np.float32)[:, None, None]
    out = _run(grid, lambda g, i: np.broadcast_to(values, (2, tile_px, tile_px)), channels=2)
    _, _, w, h = grid.region
    assert out.shape == (2, h, w) and out.dtype == np.float32
    # Accumulated in float32: a few units in the last place of each value.
    assert (np.abs(out - values) <= 1e-6 * np.abs(values)).all()


@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("case", CASES)
def test_identity_model_reconstructs(case, overlap, rng):
    region_l0, slide_mpp, model_mpp, tile_px = case
    grid = make_grid(
        region_l0, slide_mpp=slide_mpp, model_mpp=model_mpp, tile_px=tile_px, overlap=overlap
    )
    image = _image_for(grid, 3, rng)
    out = _run(grid, _identity(image), channels=3)
    _, _, w, h = grid.region
    assert np.abs(out - image[:, :h, :w]).max() <= 1e-5


def test_identity_float64(rng):
    grid = make_grid((0, 0, 300, 200), slide_mpp=1, model_mpp=1, tile_px=64, overlap=0.5)
    image = _image_for(grid, 1, rng).astype(np.float64)
    out = _run(grid, _identity(image), dtype=np.float64)
    assert out.dtype == np.float64
    assert np.abs(out - image[:, :200, :300]).max() <= 1e-12


def _second_difference(a: np.ndarray) -> float:
    return float(max(np.abs(np.diff(a, 2, axis=-1)).max(), np.abs(np.diff(a, 2, axis=-2)).max()))


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
def test_no_seams(overlap):
    grid = make_grid((0, 0, 461, 389), slide_mpp=1, model_mpp=1, tile_px=64, overlap=overlap)
    _, _, w, h = grid.region
    yy, xx = np.mgrid[0 : h + 64, 0 : w + 64].astype(np.float64)
    ramp = (0.002 * xx + 0.001 * yy + 1e-6 * xx * yy)[None]
    out = _run(grid, _identity(ramp), dtype=np.float64)
    assert _second_difference(out) <= _second_difference(ramp[:, :h, :w]) + 1e-9
    # A model off by a different constant on every tile: blending spreads each step
    # over the overlap, so the output has no jump like a plain mosaic would.
    bias = np.random.default_rng(0).uniform(-0.05, 0.05, len(grid))

    def biased(g, i):
        return _identity(ramp)(g, i) + bias[i]

    blended = _run(grid, biased, dtype=np.float64)
    mosaic = _run(
        make_grid((0, 0, 461, 389), slide_mpp=1, model_mpp=1, tile_px=64, overlap=0),
        lambda g, i: _identity(ramp)(g, i) + bias[i],
        dtype=np.float64,
    )
    slope = max(np.abs(np.diff(ramp, axis=a)).max() for a in (-1, -2))
    jump = max(np.abs(np.diff(blended, axis=a)).max() for a in (-1, -2))
    assert max(np.abs(np.diff(mosaic, axis=a)).max() for a in (-1, -2)) > slope + 0.02
    ramp_px = min(64 - grid.stride_px, 32)
    # A sin² ramp across r px changes by at most (π/2r)·Δ per px, Δ <= 0.1.
    assert jump <= slope + 0.1 * math.pi / (2 * ramp_px) * 1.1


def test_tissue_mask_drops_glass_tiles_and_covers_tissue():
    # A 2000 x 1600 level-0 region at 0.5 µm/px; model at 1 µm/px; mask at downsample 16.
    tissue = np.zeros((100, 125), bool)
    yy, xx = np.mgrid[:100, :125]
    tissue[(yy - 40) ** 2 + (xx - 50) ** 2 < 20**2] = True
    tissue[80:84, 100:103] = True
    kwargs = dict(slide_mpp=0.5, model_mpp=1.0, tile_px=64, overlap=0.5)
    full = make_grid((0, 0, 2000, 1600), **kwargs)
    grid = make_grid((0, 0, 2000, 1600), **kwargs, tissue=tissue, tissue_downsample=16)
    assert 0 < len(grid) < len(full)
    # Kept tiles are exactly those whose footprint touches a tissue pixel.
    kept = {tuple(o) for o in grid.origins.tolist()}
    for x, y in full.origins.tolist():
        rows = slice(y * 2 // 16, -(-(y + 64) * 2 // 16))
        window = tissue[rows, x * 2 // 16 : -(-(x + 64) * 2 // 16)]
        assert ((x, y) in kept) == bool(window.any())
    # Every tissue pixel (in model px) is covered.
    tissue_model = np.repeat(np.repeat(tissue, 8, 0), 8, 1)[: grid.region[3], : grid.region[2]]
    coverage = _coverage(grid)
    assert (coverage[tissue_model] >= 1).all()
    out = _run(grid, lambda g, i: np.full((1, 64, 64), 2.5, np.float32), fill=-1.0)
    np.testing.assert_allclose(out[0][tissue_model], 2.5, rtol=1e-6)  # float32 sums
    assert (out[0][coverage == 0] == -1.0).all()


def test_tissue_with_partial_region():
    tissue = np.ones((10, 10), bool)
    grid = make_grid(
        (100, 100, 50, 50),
        slide_mpp=1,
        model_mpp=1,
        tile_px=16,
        tissue=tissue,
        tissue_downsample=1000,
    )
    assert len(grid) == 36
    empty = make_grid(
        (100, 100, 50, 50),
        slide_mpp=1,
        model_mpp=1,
        tile_px=16,
        tissue=np.zeros((10, 10), bool),
        tissue_downsample=1000,
    )
    assert len(empty) == 0
    stitcher = Stitcher(empty, 1)
    assert stitcher.done and stitcher.pop_final_cells() == []
    assert (stitcher.result() == 0).all()


# -- cells, memory, resume ------------------------------------------------------------
def _drive(grid, model, order, channels=1, **kwargs):
    """Add tiles in `order`, popping after each; return cells and the max live count."""
    stitcher = Stitcher(grid, channels, **kwargs)
    popped, live = {}, 0
    for i in order:
        stitcher.add(int(i), model(grid, int(i)))
        live = max(live, stitcher.live_cells)
        for r, c, values in stitcher.pop_final_cells():
            assert (r, c) not in popped, f"cell {(r, c)} final twice"
            popped[(r, c)] = values
    assert stitcher.done and stitcher.live_cells == 0
    return popped, live


def _assemble(grid, popped, channels=1, fill=0.0):
    _, _, w, h = grid.region
    out = np.full((channels, h, w), fill, np.float32)
    for (r, c), values in popped.items():
        rows, cols = grid.cell_slices(r, c)
        assert values.shape == (channels, rows.stop - rows.start, cols.stop - cols.start)
        out[:, rows, cols] = values
    return out


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_row_major_memory_is_bounded(overlap, rng):
    # A tall region: live cells must not grow with its height.
    grid = make_grid((0, 0, 300, 3000), slide_mpp=1, model_mpp=1, tile_px=64, overlap=overlap)
    image = _image_for(grid, 1, rng)
    popped, live = _drive(grid, _identity(image), range(len(grid)))
    tiles_per_row = len(np.unique(grid.origins[:, 0]))
    rows_in_flight = math.ceil(grid.tile_px / grid.stride_px) + 1
    assert live <= (tiles_per_row + 2) * rows_in_flight
    assert live < grid.cell_shape[0] * grid.cell_shape[1] / 10
    assert len(popped) == grid.cell_shape[0] * grid.cell_shape[1]
    np.testing.assert_array_equal(_assemble(grid, popped), _run(grid, _identity(image)))


def test_pop_final_cells_reproduces_result_centre_out(rng):
    grid = make_grid((13, 7, 700, 500), slide_mpp=0.5, model_mpp=1, tile_px=48, overlap=0.5)
    image = _image_for(grid, 2, rng)
    order = order_centre_out(grid, (500, 300))
    popped, _ = _drive(grid, _identity(image), order, channels=2)
    expected = _run(grid, _identity(image), 2, order=order)
    np.testing.assert_array_equal(_assemble(grid, popped, 2), expected)


def test_result_after_pop_raises():
    grid = make_grid((0, 0, 100, 100), slide_mpp=1, model_mpp=1, tile_px=64)
    stitcher = Stitcher(grid, 1)
    for i in range(len(grid)):
        stitcher.add(i, np.zeros((1, 64, 64)))
    assert len(stitcher.pop_final_cells()) == 16
    assert stitcher.pop_final_cells() == []
    with pytest.raises(RuntimeError, match="16 cells were already handed out"):
        stitcher.result()


def test_resume_recomputes_only_unfinished_cells(rng):
    grid = make_grid((0, 0, 600, 400), slide_mpp=1, model_mpp=1, tile_px=64, overlap=0.5)
    image = _image_for(grid, 1, rng)
    model = _identity(image)
    # First run: killed after a third of the tiles; its final cells were persisted.
    first = Stitcher(grid, 1)
    for i in range(len(grid) // 3):
        first.add(i, model(grid, i))
    persisted = {(r, c): v for r, c, v in first.pop_final_cells()}
    assert persisted
    done = np.zeros(grid.cell_shape, bool)
    for r, c in persisted:
        done[r, c] = True
    todo = grid.tiles_touching(~done)
    assert 0 < len(todo) < len(grid)
    second = Stitcher(grid, 1, tiles=todo)
    for i in todo:
        second.add(int(i), model(grid, int(i)))
    resumed = {(r, c): v for r, c, v in second.pop_final_cells()}
    assert second.done and second.live_cells == 0
    # Every unfinished cell is produced; a finished one only if all its tiles were rerun.
    assert {(r, c) for r, c in zip(*np.nonzero(~done), strict=True)} <= resumed.keys()
    for cell in resumed.keys() & persisted.keys():
        assert set(grid.tiles_for_cell(*cell).tolist()) <= set(todo.tolist())
        np.testing.assert_array_equal(resumed[cell], persisted[cell])
    np.testing.assert_array_equal(_assemble(grid, persisted | resumed), _run(grid, model))
    with pytest.raises(ValueError, match=r"tile `index` 0 is not among the Stitcher's `tiles`"):
        Stitcher(grid, 1, tiles=todo[todo > 0]).add(0, model(grid, 0))


@pytest.mark.parametrize("seed", range(12))
def test_random_grids(seed):
    rng = np.random.default_rng(1000 + seed)
    tile_px = int(rng.integers(16, 97))
    overlap = float(rng.choice([0.0, rng.uniform(0, 0.95)]))
    slide_mpp = float(rng.choice([0.25, 0.5, 0.2527]))
    model_mpp = slide_mpp * float(rng.choice([1, 2, 4, 2.5]))
    region = tuple(int(v) for v in (*rng.integers(0, 5000, 2), *rng.integers(1, 1500, 2)))
    grid = make_grid(
        region, slide_mpp=slide_mpp, model_mpp=model_mpp, tile_px=tile_px, overlap=overlap
    )
    assert (_coverage(grid) >= 1).all()
    image = _image_for(grid, 1, rng)
    order = rng.permutation(len(grid))
    popped, _ = _drive(grid, _identity(image), order)
    _, _, w, h = grid.region
    out = _assemble(grid, popped)
    assert np.abs(out - image[:, :h, :w]).max() <= 1e-5
    const = _run(grid, lambda g, i: np.full((1, tile_px, tile_px), 0.3, np.float32))
    assert np.abs(const - 0.3).max() <= 1e-6


# -- bad input ----------------------------------------------------------------------------
GOOD = dict(region_l0=(0, 0, 100, 100), slide_mpp=0.5, model_mpp=1.0, tile_px=64, overlap=0.5)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"tile_px": 8}, ValueError, r"`tile_px` must be an int >= 16, got 8"),
        ({"tile_px": 64.0}, ValueError, r"`tile_px` must be an int >= 16, got 64.0"),
        ({"tile_px": True}, ValueError, r"`tile_px` must be an int >= 16, got True"),
        ({"overlap": 1.0}, ValueError, r"`overlap` must be in \[0, 1\), got 1.0"),
        ({"overlap": -0.1}, ValueError, r"`overlap` must be in \[0, 1\), got -0.1"),
        (
            {"region_l0": (0, 0, 0, 10)},
            ValueError,
            r"`region_l0` must have w > 0 and h > 0, "
            r"got \(0, 0, 0, 10\)",
        ),
        ({"region_l0": (0, 0, 10, -5)}, ValueError, r"`region_l0`.*got \(0, 0, 10, -5\)"),
        ({"region_l0": (0, 0, 10)}, ValueError, r"`region_l0` must be \(x, y, w, h\)"),
        ({"slide_mpp": 0}, ValueError, r"`slide_mpp` must be a finite number > 0, got 0"),
        ({"model_mpp": -1.0}, ValueError, r"`model_mpp` must be a finite number > 0, got -1.0"),
        ({"model_mpp": float("nan")}, ValueError, r"`model_mpp` .*got nan"),
        ({"slide_mpp": None}, TypeError, r"`slide_mpp` must be a number, got NoneType"),
        ({"tissue": np.ones((4, 4), bool)}, ValueError, r"`tissue_downsample` must be given"),
        (
            {"tissue": np.ones((4, 4), bool), "tissue_downsample": 0},
            ValueError,
            r"`tissue_downsample` must be a finite number > 0, got 0",
        ),
        (
            {"tissue": np.ones(4, bool), "tissue_downsample": 8},
            ValueError,
            r"`tissue` must be a non-empty 2-D mask, got shape \(4,\)",
        ),
    ],
)
def test_make_grid_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        make_grid(**(GOOD | change))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((15, 0.5), r"`tile_px` must be an int >= 16, got 15"),
        ((64, 1.5), r"`overlap` must be in \[0, 1\), got 1.5"),
    ],
)
def test_blend_weights_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        blend_weights(*args)


def test_stitcher_bad_input():
    grid = make_grid(**GOOD)
    with pytest.raises(ValueError, match=r"`channels` must be >= 1, got 0"):
        Stitcher(grid, 0)
    with pytest.raises(ValueError, match=r"`dtype` must be a floating dtype, got int32"):
        Stitcher(grid, 1, dtype=np.int32)
    with pytest.raises(ValueError, match=r"`tiles` must be tile indices in \[0, 0\], got int64"):
        Stitcher(grid, 1, tiles=np.array([3]))
    stitcher = Stitcher(grid, 2)
    with pytest.raises(ValueError, match=r"`tile_out` must have shape \(2, 64, 64\), got \(1, 64"):
        stitcher.add(0, np.zeros((1, 64, 64)))
    with pytest.raises(IndexError, match=r"`index` must be in \[0, 0\], got 1"):
        stitcher.add(1, np.zeros((2, 64, 64)))
    stitcher.add(0, np.zeros((2, 64, 64)))
    with pytest.raises(ValueError, match="tile `index` 0 was already added"):
        stitcher.add(0, np.zeros((2, 64, 64)))
