"""Tests of segbench.baselines on small hand-made images whose answers are known by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from segbench.baselines import (
    BASELINES,
    BaseSegmenter,
    KMeansSegmenter,
    MultiThresholdSegmenter,
    ThresholdSegmenter,
    build_baseline,
    load_baseline,
)
from segbench.baselines import postprocess as pp
from segbench.eval.metrics import f1_scorer
from segbench.types import Instances, masks_to_boxes

NAMES = sorted(BASELINES)
SIZE = (128, 128)
R = 20
SEPARATED = ((40, 40), (88, 88))
TOUCHING = ((64, 44), (64, 80))  # centres 36 px apart: the discs overlap in a narrow neck


def disc_masks(centres, r=R, shape=SIZE) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r for cy, cx in centres])


def disc_image(centres=SEPARATED, *, fg=200, bg=40, noise=0.0, seed=0, r=R) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 image of discs of grey ``fg`` on ``bg`` (+ Gaussian noise), and their masks."""
    masks = disc_masks(centres, r)
    img = np.full(SIZE, bg, np.float64)
    img[masks.any(axis=0)] = fg
    if noise:
        img += np.random.default_rng(seed).normal(0.0, noise, SIZE)
    return np.clip(img, 0, 255).round().astype(np.uint8), masks


def rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def best_ious(pred: Instances, gt_masks: np.ndarray) -> list[float]:
    return [max(iou(p, g) for p in pred.masks) for g in gt_masks]


def check_contract(inst: Instances, size=SIZE) -> None:
    assert isinstance(inst, Instances)
    n = len(inst)
    assert inst.image_size == size
    assert inst.masks.dtype == bool and inst.masks.shape == (n, *size)
    assert inst.scores.dtype == np.float32 and inst.scores.shape == (n,)
    assert np.all((inst.scores >= 0) & (inst.scores <= 1)) and not np.isnan(inst.scores).any()
    assert np.all(np.diff(inst.scores) <= 0), "instances must come best score first"
    assert inst.labels.tolist() == [1] * n
    np.testing.assert_array_equal(inst.boxes, masks_to_boxes(inst.masks))
    assert all(m.any() for m in inst.masks)


# --------------------------------------------------------------------------------------------------
# What every baseline must do
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", [0.0, 10.0])
@pytest.mark.parametrize("fg,bg", [(200, 40), (40, 200)])
@pytest.mark.parametrize("name", NAMES)
def test_two_separated_discs_give_two_instances(name, fg, bg, noise):
    img, masks = disc_image(fg=fg, bg=bg, noise=noise)
    inst = build_baseline(name, min_area=50)(rgb(img))
    check_contract(inst)
    assert len(inst) == 2
    assert min(best_ious(inst, masks)) > 0.9


@pytest.mark.parametrize("name", NAMES)
def test_touching_discs_are_split_only_when_asked(name):
    img, masks = disc_image(TOUCHING, noise=5.0)
    whole = build_baseline(name, split_touching=False, min_area=50)(rgb(img))
    split = build_baseline(name, split_touching=True, min_distance=10, min_area=50)(rgb(img))
    assert len(whole) == 1
    assert iou(whole.masks[0], masks.any(axis=0)) > 0.9
    check_contract(split)
    assert len(split) == 2
    assert min(best_ious(split, masks)) > 0.9


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(*SIZE, 3), SIZE, (*SIZE, 1), (*SIZE, 4)])
def test_constant_image_gives_no_instance_and_no_warning(name, shape):
    img = np.full(shape, 77, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inst = build_baseline(name)(img)
    assert len(inst) == 0
    assert inst.masks.shape == (0, *SIZE) and inst.scores.dtype == np.float32


@pytest.mark.parametrize("name", NAMES)
def test_grey_and_rgba_inputs_match_rgb(name):
    grey, _ = disc_image(noise=5.0)
    seg = build_baseline(name, min_area=50)
    ref = seg(rgb(grey))
    assert len(ref) == 2
    rgba = np.concatenate([rgb(grey), np.full((*SIZE, 1), 9, np.uint8)], axis=2)
    for img in (grey, grey[:, :, None], rgba):
        out = seg(img)
        np.testing.assert_array_equal(out.masks, ref.masks)
        np.testing.assert_array_equal(out.scores, ref.scores)


@pytest.mark.parametrize("name", NAMES)
def test_non_uint8_image_is_a_type_error(name):
    grey, _ = disc_image()
    seg = build_baseline(name)
    with pytest.raises(TypeError, match="uint8"):
        seg(grey.astype(np.float32) / 255)
    with pytest.raises(TypeError, match="numpy array"):
        seg(grey.tolist())
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        seg(np.zeros((4, 4, 2), np.uint8))


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
def training_set(centres=SEPARATED, *, fg=200, bg=40, n=3):
    images, targets = [], []
    for seed in range(n):
        img, masks = disc_image(centres, fg=fg, bg=bg, noise=8.0, seed=seed)
        images.append(rgb(img))
        targets.append(Instances.from_masks(masks))
    return images, targets


@pytest.mark.parametrize("name", NAMES)
def test_fit_learns_polarity_min_area_and_split(name):
    disc_area = int(disc_masks([(64, 64)]).sum())  # 1257 pixels for r = 20
    bright = build_baseline(name).fit(*training_set(fg=200, bg=40), scorer=f1_scorer)
    fitted = bright.get_params()["fitted"]
    assert fitted["polarity"] == "bright"
    assert fitted["min_area"] == int(0.5 * disc_area) == 628
    assert fitted["min_distance"] == 14  # 0.7 x the equivalent radius 20
    assert fitted["split_touching"] is False  # splitting gains nothing on separated discs

    dark = build_baseline(name).fit(*training_set(fg=40, bg=200), scorer=f1_scorer)
    assert dark.get_params()["fitted"]["polarity"] == "dark"

    touching = build_baseline(name, min_distance=10).fit(*training_set(TOUCHING), scorer=f1_scorer)
    fitted = touching.get_params()["fitted"]
    assert fitted["split_touching"] is True
    # unsplit, the merged blob matches at most one disc (its IoU with one is about 0.5): F1 <= 2/3
    assert fitted["split_score"]["split"] == 1.0
    assert fitted["split_score"]["no_split"] in (0.0, pytest.approx(2 / 3))
    img, masks = disc_image(TOUCHING, noise=8.0, seed=99)
    assert len(touching(rgb(img))) == 2


def test_fitting_split_touching_needs_a_scorer():
    with pytest.raises(ValueError, match="pass scorer="):
        ThresholdSegmenter().fit(*training_set())
    calls = []

    def scorer(gts, preds):  # prefers not splitting, whatever the images
        calls.append(len(preds))
        return 1.0 if len(calls) == 1 else 0.0

    seg = ThresholdSegmenter(min_distance=10).fit(*training_set(TOUCHING), scorer=scorer)
    assert calls == [len(training_set(TOUCHING)[0])] * 2  # both choices scored on the same images
    assert seg.get_params()["fitted"]["split_touching"] is False
    assert seg.get_params()["fitted"]["split_score"] == {"no_split": 1.0, "split": 0.0}


def test_fit_keeps_explicit_options():
    seg = ThresholdSegmenter(polarity="dark", min_area=5, split_touching=True).fit(*training_set())
    assert seg.get_params()["fitted"].keys() == {"min_distance"}
    assert seg._polarity(np.zeros((2, 2), np.uint8)) == "dark"


def test_fixed_threshold_is_fitted_from_pixels():
    seg = ThresholdSegmenter(method="fixed")
    with pytest.raises(ValueError, match="pass value="):
        seg(disc_image()[0])
    images, targets = [], []
    for centres in (SEPARATED, TOUCHING):
        img, masks = disc_image(centres, fg=200, bg=40)
        images.append(img)
        targets.append(Instances.from_masks(masks))
    seg.fit(images, targets, scorer=f1_scorer)
    # every level in [40, 199] separates 40 from 200 perfectly; the first one is kept
    assert seg.get_params()["fitted"]["value"] == 40.5
    assert len(seg(images[0])) == 2


def test_multi_threshold_fits_foreground_classes():
    # three grey levels: background 30, objects 220, a distractor disc at 120 that is not an object
    images, targets = [], []
    for seed in range(2):
        img = np.full(SIZE, 30.0)
        objects = disc_masks(SEPARATED, r=16)
        img[objects.any(axis=0)] = 220
        img[disc_masks([(40, 90)], r=14)[0]] = 120
        img += np.random.default_rng(seed).normal(0, 4, SIZE)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        targets.append(Instances.from_masks(objects))
    seg = MultiThresholdSegmenter(classes=3, min_area=50).fit(images, targets, scorer=f1_scorer)
    assert seg.get_params()["fitted"]["foreground_classes"] == [2]
    assert min(best_ious(seg(images[0]), targets[0].masks)) > 0.95
    assert len(seg(images[0])) == 2
    # given thresholds: class 1 (between 75 and 170) alone finds the distractor only
    mid = MultiThresholdSegmenter(thresholds=[75, 170], foreground_classes=[1], min_area=50)(images[0])
    assert len(mid) == 1 and iou(mid.masks[0], disc_masks([(40, 90)], r=14)[0]) > 0.95


def test_kmeans_learns_object_colour():
    # red discs are objects; a green disc of the same brightness is not
    images, targets = [], []
    for seed in range(2):
        img = np.zeros((*SIZE, 3), np.float64)
        img[:] = (90, 90, 90)
        objects = disc_masks(SEPARATED, r=16)
        img[objects.any(axis=0)] = (220, 40, 40)
        img[disc_masks([(40, 90)], r=14)[0]] = (40, 150, 40)
        img += np.random.default_rng(seed).normal(0, 4, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        targets.append(Instances.from_masks(objects))
    seg = KMeansSegmenter(k=3, min_area=50).fit(images, targets, scorer=f1_scorer)
    fitted = seg.get_params()["fitted"]
    assert len(fitted["fg_colours"]) == 2 and len(fitted["bg_colours"]) == 4  # one red cluster per image
    red = np.asarray(fitted["fg_colours"])
    np.testing.assert_allclose(red, [[220 / 255, 40 / 255, 40 / 255]] * 2, atol=0.02)
    out = seg(images[1])
    assert len(out) == 2
    assert min(best_ious(out, targets[1].masks)) > 0.95


def test_fit_input_errors(monkeypatch):
    images, targets = training_set()
    with pytest.raises(ValueError, match="3 images but 2 targets"):
        ThresholdSegmenter().fit(images, targets[:2])
    with pytest.raises(ValueError, match="at least one"):
        ThresholdSegmenter().fit([], [])
    with pytest.raises(TypeError, match="training image 1: .*uint8"):
        ThresholdSegmenter().fit([images[0], images[1].astype(float)], targets[:2])
    with pytest.raises(ValueError, match="target 0 is for an image of size"):
        ThresholdSegmenter().fit([images[0][:64]], targets[:1])
    # a fit that fails part-way leaves the previous fit in place
    seg = ThresholdSegmenter(method="fixed").fit(images, targets, scorer=f1_scorer)
    before = seg.get_params()

    def broken(*args, **kwargs):
        raise RuntimeError("metrics failed")

    with pytest.raises(RuntimeError, match="metrics failed"):
        seg.fit(*training_set(fg=40, bg=200), scorer=broken)
    assert seg.get_params() == before


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------
def test_threshold_score_is_ring_contrast():
    img = np.full(SIZE, 40, np.uint8)
    m = disc_masks(SEPARATED)
    img[m[0]] = 200
    img[m[1]] = 90
    out = ThresholdSegmenter(method="fixed", value=60, min_area=50)(img)
    # contrast 160 and 50 over the image's dynamic range p99 - p1 = 200 - 40
    np.testing.assert_allclose(out.scores, [1.0, 50 / 160], rtol=1e-6)
    assert iou(out.masks[1], m[1]) == 1.0


def test_region_helpers():
    lab = np.array([[1, 1, 0, 2], [1, 0, 0, 3], [0, 0, 4, 4]], np.int32)
    out, n = pp.remove_small_regions(lab, 2)
    assert n == 2 and out.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 2, 2]]
    vals = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.testing.assert_allclose(pp.region_means(lab, vals, 4), [(0 + 1 + 4) / 3, 3, 7, 10.5])
    assert pp.percentile_u8(np.arange(101, dtype=np.uint8), 50) == 50.0


# --------------------------------------------------------------------------------------------------
# Parameters, registry, errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_params_round_trip_gives_identical_predictions(name, tmp_path):
    seg = build_baseline(name).fit(*training_set(TOUCHING), scorer=f1_scorer)
    params = seg.get_params()
    assert params["name"] == name and params["fitted"] is not None
    restored = BaseSegmenter.from_params(json.loads(json.dumps(params)))
    assert type(restored) is type(seg) and restored.get_params() == params
    loaded = load_baseline(seg.save(tmp_path / "b" / "params.json"))
    assert loaded.get_params() == params
    img, _ = disc_image(TOUCHING, noise=8.0, seed=7)
    ref = seg(img)
    assert len(ref) == 2
    for other in (restored, loaded):
        out = other(img)
        np.testing.assert_array_equal(out.masks, ref.masks)
        np.testing.assert_array_equal(out.scores, ref.scores)


def test_from_params_errors():
    params = ThresholdSegmenter().get_params()
    with pytest.raises(ValueError, match="params are for baseline 'threshold', not 'kmeans'"):
        KMeansSegmenter.from_params(params)
    with pytest.raises(ValueError, match="unknown baseline 'nope'.*valid names: kmeans, laplace"):
        BaseSegmenter.from_params({**params, "name": "nope"})


def test_registry_and_build_errors():
    assert set(BASELINES) == {"threshold", "multi_threshold", "sobel", "laplace", "kmeans"}
    assert isinstance(build_baseline("kmeans", k=3), KMeansSegmenter)
    with pytest.raises(
        ValueError, match="unknown baseline 'otsu'; valid names: kmeans, laplace, multi_threshold"
    ):
        build_baseline("otsu")
    with pytest.raises(
        ValueError, match=r"method='median' is not valid; choose one of: 'mean', 'otsu', 'fixed'"
    ):
        build_baseline("threshold", method="median")
    with pytest.raises(ValueError, match=r"k=0 is not valid; expected an integer in \[2, 64\]"):
        build_baseline("kmeans", k=0)
    with pytest.raises(
        ValueError, match=r"region_method='canny' is not valid; choose one of: 'watershed', 'fill'"
    ):
        build_baseline("sobel", region_method="canny")
    with pytest.raises(ValueError, match="polarity='light'"):
        build_baseline("laplace", polarity="light")
    with pytest.raises(ValueError, match=r"classes=7 is not valid; expected an integer in \[2, 4\]"):
        build_baseline("multi_threshold", classes=7)
    with pytest.raises(ValueError, match="strictly increasing"):
        build_baseline("multi_threshold", thresholds=[100, 50])
    with pytest.raises(ValueError, match=r"unknown option\(s\) kk for baseline 'kmeans'; valid options: k, "):
        build_baseline("kmeans", kk=3)
    with pytest.raises(TypeError):
        ThresholdSegmenter("otsu")  # options are keyword-only


def test_baselines_never_import_torch():
    code = (
        "import sys, numpy as np, segbench.baselines as b\n"
        "b.build_baseline('kmeans')(np.zeros((8, 8, 3), np.uint8))\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
        "print(sorted(m for m in sys.modules if m.startswith('segbench.baselines')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    torch_mods, own = out.strip().splitlines()
    assert torch_mods == "[]"
    for mod in ("base", "edges", "kmeans", "postprocess", "threshold"):
        assert f"segbench.baselines.{mod}" in own
