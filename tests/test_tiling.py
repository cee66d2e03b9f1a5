"""Large images by tiles (segbench.tiling): the grid, the whole-image RLE written from a tile, the seam
merge, the tile=auto rule, and the option through predict / eval / compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from segbench.cli import main
from segbench.tiling import (
    AUTO_BASELINE_TILE,
    TiledSegmenter,
    auto_tile,
    check_tiling,
    merge_tile_instances,
    model_size,
    tile_grid,
    tile_mask_to_rle,
    tiled,
)
from segbench.types import Instances, SegbenchError


# --------------------------------------------------------------------------------------------------
# A fake segmenter: bright pixels, one instance per connected component (answers known by hand)
# --------------------------------------------------------------------------------------------------
def blobs(image: np.ndarray) -> Instances:
    lab, n = ndimage.label(image[..., 0] > 127)
    masks = lab[None] == np.arange(1, n + 1)[:, None, None]
    return Instances.from_masks(masks, scores=np.linspace(0.9, 0.5, n) if n else np.zeros(0))


def discs(h: int, w: int, circles) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx, r in circles:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 255
    return img


def mask_iou(a: dict, b: dict) -> float:
    return float(mask_utils.iou([a], [b], [0])[0, 0])


def assert_same_instances(got: Instances, want: Instances) -> None:
    """The same masks (IoU 1, one to one) and the same boxes."""
    assert len(got) == len(want)
    iou = np.asarray(mask_utils.iou(got.get_rles(), want.get_rles(), [0] * len(want)))
    assert np.allclose(iou.max(axis=1), 1.0) and np.allclose(iou.max(axis=0), 1.0)
    assert sorted(map(tuple, got.boxes.tolist())) == sorted(map(tuple, want.boxes.tolist()))


# --------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [
        (100, 60, 50, 10),
        (64, 64, 64, 8),
        (37, 129, 16, 5),
        (200, 130, 64, 0),
        (5, 7, 10, 2),
        (97, 50, 20, 19),
    ],
)
def test_tile_grid_covers_every_pixel_with_exact_overlap_and_flush_borders(h, w, tile, overlap):
    tiles = tile_grid(h, w, tile=tile, overlap=overlap)
    seen = np.zeros((h, w), int)
    for y0, x0, y1, x1 in tiles:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(tile, h), min(tile, w))  # never a sliver
        seen[y0:y1, x0:x1] += 1
    assert seen.min() >= 1
    for axis, length in ((0, h), (1, w)):
        starts = sorted({t[axis] for t in tiles})
        assert starts[0] == 0 and min(starts[-1] + tile, length) == length  # flush with both borders
        gaps = np.diff(starts)
        assert all(g == tile - overlap for g in gaps[:-1])  # neighbours share exactly `overlap` px ...
        if len(gaps):
            assert 0 < gaps[-1] <= tile - overlap  # ... the last, moved back to the border, at least that


def test_tile_grid_by_hand():
    assert tile_grid(100, 60, tile=50, overlap=10) == [
        (0, 0, 50, 50),
        (0, 10, 50, 60),
        (40, 0, 90, 50),
        (40, 10, 90, 60),
        (50, 0, 100, 50),
        (50, 10, 100, 60),
    ]
    assert tile_grid(30, 20, tile=64, overlap=8) == [(0, 0, 30, 20)]


@pytest.mark.parametrize(
    ("tile", "overlap", "key"),
    [(0, None, "tile=0"), (-3, 2, "tile=-3"), (True, None, "tile=True"), ("big", None, "tile='big'"),
     (64, -1, "overlap=-1"), (64, 64, "overlap=64 must be smaller than tile=64"), (16, 40, "overlap=40"),
     (64, 1.5, "overlap=1.5")],
)  # fmt: skip
def test_bad_tiling_options_name_the_key_and_the_fix(tile, overlap, key):
    with pytest.raises(SegbenchError, match="pass") as e:
        check_tiling(tile, overlap)
    assert key in str(e.value)
    with pytest.raises(SegbenchError):
        tile_grid(100, 100, tile=tile, overlap=overlap)


def test_tiling_option_values():
    assert check_tiling(None) == (None, None)
    assert check_tiling("auto", 32) == ("auto", 32)
    assert check_tiling("512") == (512, None)
    with pytest.raises(SegbenchError, match="image size"):
        tile_grid(0, 10, tile=4, overlap=1)
    with pytest.raises(SegbenchError, match="tile=auto"):
        TiledSegmenter(blobs, tile="auto", overlap=2000)  # the baselines' auto tile is 1024 px


# --------------------------------------------------------------------------------------------------
# The RLE written from a tile
# --------------------------------------------------------------------------------------------------
def test_tile_rle_equals_pycocotools_encode_of_the_padded_mask():
    rng = np.random.default_rng(0)
    cases = 0
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        th, tw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        # tiles at every border, full-height tiles (runs that join across columns) and inner tiles
        y0 = int(rng.choice([0, h - th, rng.integers(0, h - th + 1)]))
        x0 = int(rng.choice([0, w - tw, rng.integers(0, w - tw + 1)]))
        mask = rng.random((th, tw)) < rng.choice([0.0, 0.05, 0.5, 0.95, 1.0])
        full = np.zeros((h, w), np.uint8, order="F")
        full[y0 : y0 + th, x0 : x0 + tw] = mask
        got = tile_mask_to_rle(mask, offset=(y0, x0), image_size=(h, w))
        assert got == {"size": [h, w], "counts": mask_utils.encode(full)["counts"].decode("ascii")}
        cases += th == h
    assert cases > 20  # full-height tiles were among them
    with pytest.raises(ValueError, match="does not fit"):
        tile_mask_to_rle(np.ones((4, 4), bool), offset=(8, 0), image_size=(10, 10))


# --------------------------------------------------------------------------------------------------
# The seam merge
# --------------------------------------------------------------------------------------------------
def test_an_object_crossing_the_seams_comes_out_as_one_instance_with_its_mask():
    # 128 px, tiles of 64 at 0, 48, 64 on each axis: the disc (diameter 41 > overlap 16) is cut by
    # every tile that holds it, and the bar crosses all three tile columns (a chain of merges)
    img = discs(128, 128, [(64, 64, 20)])
    img[110:116, 2:126] = 255
    truth = blobs(img)
    out = tiled(blobs, tile=64, overlap=16)(img)
    assert len(out) == 2 and out.masks is None  # whole-image RLE, never a dense full-image array
    assert_same_instances(out, truth)
    assert out.image_size == (128, 128)


def test_a_duplicate_inside_the_overlap_is_kept_once_and_a_zero_overlap_splits_seam_objects():
    img = discs(64, 112, [(32, 40, 5)])  # tiles of 48 at x = 0, 32, 64 and y = 0, 16: it is in four
    out = tiled(blobs, tile=48, overlap=16)(img)
    assert len(out) == 1
    assert mask_iou(out.get_rles()[0], blobs(img).get_rles()[0]) == 1.0
    cut = discs(64, 64, [(32, 32, 8)])  # overlap 0: the tiles share no pixel, nothing to compare
    halves = tiled(blobs, tile=32, overlap=0)(cut)
    assert len(halves) == 4 and halves.areas().sum() == blobs(cut).areas().sum()


def _found(masks, offsets, labels, scores, size):
    return {
        "labels": np.asarray(labels),
        "scores": np.asarray(scores, float),
        "boxes": np.zeros((len(masks), 4)),
        "rles": [tile_mask_to_rle(m, offset=o, image_size=size) for m, o in zip(masks, offsets, strict=True)],
    }


def test_merge_rule_by_hand_labels_score_and_box():
    size = (10, 20)
    tiles = [(0, 0, 10, 12), (0, 8, 10, 20)]  # they share columns 8..11
    left = np.zeros((10, 12), bool)
    left[2:6, 5:12] = True  # columns 5..11, cut by the tile's right border
    right = np.zeros((10, 12), bool)
    right[2:6, 0:7] = True  # columns 8..14 of the image
    whole = np.zeros(size, np.uint8, order="F")
    whole[2:6, 5:15] = 1
    out = merge_tile_instances(tiles, [_found([left], [(0, 0)], [1], [0.4], size),
                                       _found([right], [(0, 8)], [1], [0.7], size)], size)  # fmt: skip
    assert len(out) == 1 and out.scores.tolist() == pytest.approx([0.7])  # the highest score
    assert out.boxes.tolist() == [[5.0, 2.0, 15.0, 6.0]]  # the union mask's box
    assert mask_iou(out.rles[0], mask_utils.encode(whole)) == 1.0
    # another label: two objects
    out = merge_tile_instances(tiles, [_found([left], [(0, 0)], [1], [0.4], size),
                                       _found([right], [(0, 8)], [2], [0.7], size)], size)  # fmt: skip
    assert sorted(out.labels.tolist()) == [1, 2]
    # the same window's instances are never merged, however they overlap
    out = merge_tile_instances(
        tiles[:1], [_found([left, left], [(0, 0)] * 2, [1, 1], [0.4, 0.3], size)], size
    )
    assert len(out) == 2
    # overlapping a little: 2 common px; in the shared columns IoU 2 / 10 (< 0.5), and 2 px cover half
    # of the smaller mask (< 0.8): two objects, one when merge_ios is 0.5
    thin = np.zeros((10, 12), bool)
    thin[2:6, 0:1] = True  # image column 8, rows 2..5: 4 px
    near = np.zeros((10, 12), bool)
    near[2:4, 8:12] = True  # image columns 8..11, rows 2..3: 8 px
    found = [_found([near], [(0, 0)], [1], [0.5], size), _found([thin], [(0, 8)], [1], [0.5], size)]
    assert len(merge_tile_instances(tiles, found, size)) == 2
    assert len(merge_tile_instances(tiles, found, size, merge_ios=0.5)) == 1
    assert len(merge_tile_instances(tiles, found, size, merge_iou=0.2)) == 1


def test_tiled_and_whole_image_predictions_agree():
    rng = np.random.default_rng(3)
    circles = [
        (int(rng.integers(0, 160)), int(rng.integers(0, 200)), int(rng.integers(3, 12))) for _ in range(30)
    ]
    img = discs(160, 200, circles)
    whole = blobs(img)
    for tile, overlap in ((64, 16), (64, 30), (100, 25), (48, None)):
        assert_same_instances(tiled(blobs, tile=tile, overlap=overlap)(img), whole)


def test_a_baseline_runs_by_tiles_bounded_by_the_tile_and_keeps_its_name_and_params():
    from segbench.baselines.threshold import ThresholdSegmenter

    base = ThresholdSegmenter(method="fixed", value=127, polarity="bright", min_area=4, split_touching=False)
    seen = []

    class Spy:
        name = base.name

        def __call__(self, image):
            seen.append(image.shape)
            return base(image)

        def get_params(self):
            return base.get_params()

    img = discs(150, 170, [(20, 20, 9), (75, 80, 14), (40, 130, 10), (120, 60, 7), (70, 160, 6)])
    seg = tiled(Spy(), tile=64, overlap=32)
    out = seg(img)
    assert max(s[0] for s in seen) <= 64 and max(s[1] for s in seen) <= 64
    assert_same_instances(out, base(img))
    assert seg.name == "threshold" and seg.get_params() == base.get_params()
    assert not hasattr(tiled(blobs, tile=64), "get_params")


def test_a_segmenter_with_predict_batch_gets_tiles_in_batches():
    calls = []

    class Batched:
        name = "batched"

        def predict_batch(self, images, profile=None):
            calls.append(len(images))
            return [blobs(im) for im in images]

        def __call__(self, image):
            raise AssertionError("the batch path is used")

    img = discs(100, 100, [(50, 50, 10)])
    out = tiled(Batched(), tile=40, overlap=10, tiles_per_call=4)(img)  # 3 x 3 tiles
    assert calls == [4, 4, 1] and len(out) == 1


# --------------------------------------------------------------------------------------------------
# tile=auto
# --------------------------------------------------------------------------------------------------
def test_auto_rule_on_hand_computed_cases():
    m = (800, 1333)
    assert auto_tile(4000, 3000, model_size=m) == 800  # min(800/3000, 1333/4000) = 0.27 < 0.5
    assert auto_tile(1200, 1600, model_size=m) is None  # min(0.67, 0.83) = 0.67
    assert auto_tile(1600, 1600, model_size=m) is None  # exactly 0.5: not below
    assert auto_tile(1601, 1601, model_size=m) == 800
    assert auto_tile(500, 2700, model_size=m) == 800  # min(1.6, 0.494): the long side decides
    assert auto_tile(400, 400, model_size=(192, 192)) == 192  # 0.48
    assert auto_tile(5000, 5000, model_size=(800, 600)) == 600  # a square 600 px tile is resized by 1.0
    assert auto_tile(2048, 2048) is None and auto_tile(2049, 2048) == AUTO_BASELINE_TILE  # pixel count
    assert model_size({"min_size": [640, 800], "max_size": 1333}) == (800, 1333)
    assert model_size({"min_size": 800, "max_size": 1333, "keep_size": True}) is None


def test_auto_leaves_small_images_to_the_segmenter_and_tiles_large_ones():
    outputs = []

    def spy(image):
        outputs.append(blobs(image))
        return outputs[-1]

    seg = tiled(spy, tile="auto", model_size=(32, 32))
    small = discs(60, 60, [(30, 30, 8)])  # scale 32/60 = 0.53: whole
    assert seg(small) is outputs[-1]
    big = discs(80, 80, [(40, 40, 8)])  # 0.4: tiles of 32 px, overlap 4
    n = len(outputs)
    out = seg(big)
    assert len(outputs) - n == 9 and len(out) == 1  # starts 0, 28, 48 on each axis
    assert "tile=auto" in seg.describe()


# --------------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiling_images")
    img = discs(150, 140, [(30, 30, 10), (75, 70, 15), (64, 112, 9), (120, 40, 12)])
    img[135:141, 5:135] = 255  # a bar across every tile column
    Image.fromarray(img[..., 0] // 255 * 200).save(
        d / "scan.png"
    )  # 0 / 200 grey: Otsu splits them in any tile
    return d


def _predictions(out: Path) -> list[dict]:
    return json.loads((out / "predictions.json").read_text())


def test_predict_by_tiles_matches_the_whole_image(big_images, tmp_path, capsys):
    base = ["predict", "method=threshold", f"input={big_images}", "progress=false", "score_threshold=0"]
    assert main([*base, f"output={tmp_path / 'whole'}"]) == 0
    assert main([*base, f"output={tmp_path / 'tiles'}", "tile=64", "overlap=16", "profile=true"]) == 0
    out = capsys.readouterr().out
    assert "tiles" in out  # the profile's stage
    whole, tiles = _predictions(tmp_path / "whole"), _predictions(tmp_path / "tiles")
    assert len(whole) == len(tiles) == 5
    iou = np.asarray(
        mask_utils.iou(
            [r["segmentation"] for r in tiles], [r["segmentation"] for r in whole], [0] * len(whole)
        )
    )
    assert np.allclose(iou.max(axis=1), 1.0)
    summary = json.loads((tmp_path / "tiles" / "summary.json").read_text())
    assert "tiles of 64 px, overlap 16 px" in summary["source"]
    assert (tmp_path / "tiles" / "overlays" / "scan.png").is_file()


@pytest.mark.parametrize(
    ("extra", "says"),
    [(["tile=0"], "tile=0"), (["tile=64", "overlap=64"], "overlap=64"), (["tile=huge"], "tile")],
)
def test_predict_rejects_bad_tiling_options(big_images, tmp_path, capsys, extra, says):
    code = main(["predict", "method=threshold", f"input={big_images}", f"output={tmp_path}", *extra])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err


def test_predict_with_a_baseline_predictor_and_auto(big_images):
    from segbench.predict import load_predictor, with_tiling

    predictor = load_predictor(method="threshold")
    assert with_tiling(predictor, tile=None) is predictor
    auto = with_tiling(predictor, tile="auto")  # 150 x 140 px is far below 2048 x 2048: whole
    img = np.asarray(Image.open(big_images / "scan.png").convert("RGB"))
    got, want = auto.segment([img])[0], predictor.segment([img])[0]
    assert_same_instances(got, want)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from segbench.data.synthetic import generate

    root = tmp_path_factory.mktemp("tiling_data")
    generate(root, num_train=4, num_val=2, image_size=64, min_radius=5, max_radius=9)
    return root


def test_compare_runs_every_method_by_tiles(tiny_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        f"data.root={tiny_data}",
        "methods=[threshold,kmeans]",
        "bootstrap=0",
        "overlays=1",
        "fit_images=2",
    ]
    assert main(["compare", *args, f"out={out}", "tile=32", "overlap=20"]) == 0
    stdout = capsys.readouterr().out
    assert "every method ran by tiles: threshold: tiles of 32 px, overlap 20 px" in stdout
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["method"] for r in board["rows"]) == ["kmeans", "threshold"]
    assert json.loads((out / "baselines" / "threshold.json").read_text())["name"] == "threshold"


def test_eval_runs_the_model_by_tiles(tiny_data, tmp_path, capsys):
    from tests.helpers import untrained_checkpoint

    ckpt = untrained_checkpoint(tiny_data, tmp_path / "tiny.ckpt", size=32, detections=5)
    out = tmp_path / "eval"
    argv = ["eval", f"ckpt_path={ckpt}", f"data.root={tiny_data}", "progress=false", "limit=1"]
    assert main([*argv, f"out={out}", "tile=40", "overlap=16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tiling"] == "tiles of 40 px, overlap 16 px"
    results = json.loads((out / "results.json").read_text())
    assert results and all(r["segmentation"]["size"] == [64, 64] for r in results)
    code = main([*argv, f"out={tmp_path / 'e2'}", "tile=auto", "overlap=64"])
    assert code == 2 and "overlap=64" in capsys.readouterr().err  # not below the auto tile (32 px)
