"""Classical refinement of learned masks, with answers known by hand."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import resize

from segbench.baselines.refine import EdgeRefiner, RefinedSegmenter
from segbench.types import Instances

H = W = 256


def disc_scene(seed: int = 0, *, contrast: int = 130):
    """A bright disc of radius 90 on a dark, noisy background, and its true mask."""
    yy, xx = np.mgrid[:H, :W]
    true = np.hypot(yy - 128, xx - 120) <= 90
    rng = np.random.default_rng(seed)
    grey = np.where(true, 60 + contrast, 60) + rng.normal(0, 8, true.shape)
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2), true


def as_mask_rcnn_would(true: np.ndarray, side: int) -> np.ndarray:
    """The true mask seen through a ``side x side`` grid over its box, resized back and thresholded at
    0.5 — what Mask R-CNN's mask head and paste give for a perfect prediction."""
    ys, xs = np.nonzero(true)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = true[y0:y1, x0:x1].astype(float)
    grid = resize(crop, (side, side), order=1, anti_aliasing=True)
    out = np.zeros_like(true)
    out[y0:y1, x0:x1] = resize(grid, crop.shape, order=1) > 0.5
    return out


def iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("side", [28, 14])
def test_a_large_disc_comes_back_on_its_edge(side):
    image, true = disc_scene()
    rough = as_mask_rcnn_would(true, side)
    out = EdgeRefiner(ring=4)(image, Instances.from_masks(rough[None], scores=[0.9]))
    refined = out.get_masks()[0]
    assert iou(refined, true) >= 0.97 and iou(refined, true) > iou(rough, true)
    if side == 14:
        assert iou(rough, true) < 0.97  # the 14-cell version alone would not pass
    ys, xs = np.nonzero(refined)  # the box follows the mask
    np.testing.assert_allclose(out.boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert out.scores[0] == pytest.approx(0.9) and out.labels[0] == 1


def test_on_a_flat_image_the_mask_is_unchanged():
    _, true = disc_scene()
    rough = as_mask_rcnn_would(true, 14)
    flat = np.full((H, W, 3), 100, np.uint8)
    out = EdgeRefiner(ring=4)(flat, Instances.from_masks(rough[None], scores=[0.9]))
    np.testing.assert_array_equal(out.get_masks()[0], rough)


def _mean_iou(targets, preds) -> float:
    return float(
        np.mean([iou(p.get_masks()[0], t.get_masks()[0]) for t, p in zip(targets, preds, strict=True)])
    )


def test_the_fit_turns_refinement_on_where_edges_help_and_off_where_they_do_not():
    scenes = [disc_scene(seed) for seed in range(3)]
    images = [im for im, _ in scenes]
    targets = [Instances.from_masks(t[None]) for _, t in scenes]
    preds = [Instances.from_masks(as_mask_rcnn_would(t, 14)[None], scores=[0.9]) for _, t in scenes]
    on = EdgeRefiner().fit(images, preds, targets, scorer=_mean_iou)
    assert on.enabled and on.fit_scores_["unrefined"] < max(
        v for k, v in on.fit_scores_.items() if k != "unrefined"
    )
    # no contrast: the edges are noise, refinement cannot help: the fit switches it off
    dull = [disc_scene(seed, contrast=0)[0] for seed in range(3)]
    off = EdgeRefiner().fit(dull, preds, targets, scorer=_mean_iou)
    assert not off.enabled
    assert off(dull[0], preds[0]) is preds[0]


def test_fitted_parameters_round_trip_through_json(tmp_path):
    scenes = [disc_scene(seed) for seed in range(2)]
    r = EdgeRefiner().fit(
        [im for im, _ in scenes],
        [Instances.from_masks(as_mask_rcnn_would(t, 14)[None], scores=[0.9]) for _, t in scenes],
        [Instances.from_masks(t[None]) for _, t in scenes],
        scorer=_mean_iou,
    )
    again = EdgeRefiner.load(r.save(tmp_path / "refine.json"))
    assert again.get_params() == r.get_params() and again.enabled == r.enabled and again.ring == r.ring
    image, true = scenes[0]
    seg = RefinedSegmenter(
        lambda im: Instances.from_masks(as_mask_rcnn_would(true, 14)[None], scores=[0.9]),
        again,
        name="m+refine",
    )
    np.testing.assert_array_equal(seg(image).get_masks(), r(image, seg.segmenter(image)).get_masks())
    with pytest.raises(ValueError, match="refine parameters"):
        EdgeRefiner.from_params({"name": "threshold", "config": {}})
    with pytest.raises(ValueError, match="ring"):
        EdgeRefiner(ring=0)
