"""segbench.eval.metrics against pycocotools, and the matching scores on cases known by hand."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segbench.eval.metrics import Evaluator, coco_evaluate, match_image, matching_scores
from segbench.types import BoxFormat, Instances, convert_boxes, masks_to_rles

CATS = [{"id": 2, "name": "two"}, {"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_fixture(seed=0, n_images=8, size=64):
    """GT with several classes, crowd regions and negatives; noisy predictions with scores."""
    rng = np.random.default_rng(seed)
    images, gt_anns, results = [], [], []
    aid = 1
    for i in range(n_images):
        image_id = 100 + i
        images.append({"id": image_id, "file_name": f"{i}.png", "height": size, "width": size + 8})
        h, w = size, size + 8
        n = 0 if i == 2 else int(rng.integers(1, 6))  # image 2 is a negative
        for _ in range(n):
            r = float(rng.uniform(3, 14))
            m = _disc(h, w, rng.uniform(0, h), rng.uniform(0, w), r)
            if m.sum() == 0:
                continue
            cat = int(rng.choice([2, 5, 9]))
            crowd = int(rng.random() < 0.12)
            rle = masks_to_rles(m[None])[0]
            ys, xs = np.nonzero(m)
            box = [
                float(xs.min()),
                float(ys.min()),
                float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1),
            ]
            gt_anns.append(
                {
                    "id": aid,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": box,
                    "iscrowd": crowd,
                }
            )
            aid += 1
            # a prediction near it (sometimes the wrong class), and sometimes a duplicate
            for _k in range(1 + int(rng.random() < 0.3)):
                pm = _disc(
                    h,
                    w,
                    ys.mean() + rng.normal(0, 1.5),
                    xs.mean() + rng.normal(0, 1.5),
                    r * rng.uniform(0.8, 1.2),
                )
                if pm.sum() == 0:
                    continue
                pys, pxs = np.nonzero(pm)
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": cat if rng.random() > 0.15 else int(rng.choice([2, 5, 9])),
                        "segmentation": masks_to_rles(pm[None])[0],
                        "score": float(rng.random()),
                        "bbox": [
                            float(pxs.min()),
                            float(pys.min()),
                            float(np.ptp(pxs) + 1),
                            float(np.ptp(pys) + 1),
                        ],
                    }
                )
        for _ in range(int(rng.integers(0, 3))):  # false positives
            pm = _disc(h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 8))
            if pm.sum():
                pys, pxs = np.nonzero(pm)
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": int(rng.choice([2, 5, 9])),
                        "segmentation": masks_to_rles(pm[None])[0],
                        "score": float(rng.random()),
                        "bbox": [
                            float(pxs.min()),
                            float(pys.min()),
                            float(np.ptp(pxs) + 1),
                            float(np.ptp(pys) + 1),
                        ],
                    }
                )
    gt = {"images": images, "annotations": gt_anns, "categories": CATS}
    return gt, results


def pycocotools_stats(gt, results, iou_type, cat_ids=None, use_cats=True):
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        E = COCOeval(coco, dt, iou_type)
        if cat_ids is not None:
            E.params.catIds = cat_ids
        E.params.useCats = int(use_cats)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_numbers_equal_pycocotools(iou_type, backend):
    gt, results = make_fixture()
    assert any(a["iscrowd"] for a in gt["annotations"])
    ref = pycocotools_stats(gt, results, iou_type)
    ours = coco_evaluate(gt, results, iou_type=iou_type, max_dets=100, backend=backend)
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"]
    for k, r in zip(keys, [ref[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 8)], strict=True):
        o = -1 if ours[k] is None else ours[k]
        assert o == pytest.approx(r, abs=1e-9), k
    assert 0.1 < ours["AP"] < 0.95  # a fixture that exercises the numbers
    for cat in CATS:
        ref_c = pycocotools_stats(gt, results, iou_type, cat_ids=[cat["id"]])
        assert ours["per_class_AP"][cat["name"]] == pytest.approx(ref_c[0], abs=1e-9)
    ref_agn = pycocotools_stats(gt, results, iou_type, use_cats=False)
    agn = coco_evaluate(gt, results, iou_type=iou_type, max_dets=100, class_agnostic=True, backend=backend)
    assert agn["AP"] == pytest.approx(ref_agn[0], abs=1e-9)
    assert agn["AP"] != pytest.approx(ours["AP"])


def test_default_cap_keeps_every_detection(caplog):
    # one image with 150 objects and 150 perfect detections: a cap of 100 would lose recall
    h, w = 60, 150
    masks = np.zeros((150, h, w), bool)
    for k in range(150):
        y, x = divmod(k, 30)
        masks[k, y * 12 : y * 12 + 4, x * 5 : x * 5 + 4] = True
    inst = Instances.from_masks(masks)
    ev = Evaluator([{"id": 1, "name": "x"}], max_dets=None)
    ev.update(inst, Instances.from_masks(masks, scores=np.linspace(1, 0.5, 150)))
    m = ev.compute()
    assert m["segm_AP"] == pytest.approx(1.0) and m["max_dets"] == 150
    capped = coco_evaluate(ev.gt_dataset(), ev.results, iou_type="segm", max_dets=100)
    assert capped["AP"] < 0.7 and capped["truncated_images"] == 1
    assert "max_dets=100" in caplog.text


def test_evaluator_equals_coco_evaluate_on_its_own_dicts():
    gt, results = make_fixture(seed=1)
    ev = Evaluator(CATS)
    # rebuild Instances from the fixture and feed them through update()
    for im in gt["images"]:
        h, w = im["height"], im["width"]
        g = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        p = [r for r in results if r["image_id"] == im["id"]]
        gi = Instances(
            image_size=(h, w),
            boxes=convert_boxes(
                np.array([a["bbox"] for a in g]).reshape(-1, 4), BoxFormat.XYWH, BoxFormat.XYXY
            ),
            labels=[a["category_id"] for a in g],
            rles=[a["segmentation"] for a in g],
            iscrowd=[a["iscrowd"] for a in g],
        )
        pi = Instances(
            image_size=(h, w),
            boxes=convert_boxes(
                np.array([r["bbox"] for r in p]).reshape(-1, 4), BoxFormat.XYWH, BoxFormat.XYXY
            ),
            labels=[r["category_id"] for r in p],
            rles=[r["segmentation"] for r in p],
            scores=[r["score"] for r in p],
        )
        ev.update(gi, pi, image_id=im["id"])
    m = ev.compute()
    ref = pycocotools_stats(gt, results, "segm")
    assert m["segm_AP"] == pytest.approx(ref[0], abs=1e-9)
    assert json.dumps(m)  # serialisable


def _masks(*boxes, h=20, w=20):
    out = np.zeros((len(boxes), h, w), bool)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        out[k, y0:y1, x0:x1] = True
    return out


def test_matching_known_by_hand():
    gt = Instances.from_masks(_masks((0, 0, 4, 4), (10, 10, 14, 14), (0, 10, 4, 14)))
    # first: exact; second: shifted by 1 column -> IoU 12/20 = 0.6; third GT missed; one false positive
    pred = Instances.from_masks(
        _masks((0, 0, 4, 4), (10, 11, 14, 15), (16, 0, 20, 4)), scores=[0.9, 0.8, 0.7]
    )
    m = match_image(gt, pred)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert m.iou_sum == pytest.approx(1.0 + 0.6)
    s = matching_scores([gt], [pred])
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["pq"] == pytest.approx(1.6 / (2 + 0.5 + 0.5))
    # foreground: gt 48 px, pred 48 px, intersection 16 + 12 = 28
    assert s["fg_iou"] == pytest.approx(28 / (48 + 48 - 28))
    assert s["fg_dice"] == pytest.approx(2 * 28 / 96)
    # the score threshold drops the 0.7 false positive
    assert matching_scores([gt], [pred], score_threshold=0.75)["precision"] == pytest.approx(1.0)


def test_matching_ignores_predictions_on_crowd_and_empty_cases():
    gt = Instances(
        image_size=(20, 20),
        boxes=np.zeros((2, 4)),
        labels=[1, 1],
        masks=_masks((0, 0, 4, 4), (10, 10, 20, 20)),
        iscrowd=[False, True],
    )
    pred = Instances.from_masks(_masks((0, 0, 4, 4), (12, 12, 16, 16)), scores=[0.9, 0.9])
    m = match_image(gt, pred)
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)
    empty = Instances.empty((20, 20), with_scores=True)
    s = matching_scores([Instances.empty((20, 20))], [empty])
    assert s["f1"] == 1.0 and s["fg_iou"] == 1.0
    s = matching_scores([Instances.from_masks(_masks((0, 0, 4, 4)))], [empty])
    assert s["recall"] == 0.0 and s["f1"] == 0.0 and s["fg_iou"] == 0.0


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_inputs_are_not_modified(backend):
    gt, results = make_fixture(seed=2)
    before = json.dumps([gt, results], sort_keys=True)
    for t in ("segm", "bbox"):
        coco_evaluate(gt, results, iou_type=t, backend=backend)
    assert json.dumps([gt, results], sort_keys=True) == before


def test_areas_of_more_than_255_rle_masks():
    masks = np.zeros((300, 10, 10), bool)
    masks[:, 2:5, 2:6] = True
    masks[7, 0, 0] = True
    inst = Instances(
        image_size=(10, 10), boxes=np.zeros((300, 4)), labels=np.ones(300), rles=masks_to_rles(masks)
    )
    a = inst.areas()
    assert a.shape == (300,) and a[0] == 12 and a[7] == 13


def test_boundary_ap_punishes_a_mask_wrong_at_its_edges():
    """A disc of radius 35 predicted for a true disc of radius 40 (same centre, 200 x 200 image): mask IoU
    35² / 40² = 0.766, so segm AP counts the 6 IoU thresholds 0.50..0.75 of 10: 0.6. Its boundary band
    (2 % of the diagonal = 6 px wide) overlaps the true one in a 1-px ring only (Boundary IoU ~0.09), so
    boundary AP is 0. An exact mask scores 1 on both."""
    yy, xx = np.mgrid[:200, :200]
    r = np.hypot(yy - 100, xx - 100)
    true, small = (r <= 40)[None], (r <= 35)[None]
    ev = Evaluator([{"id": 1, "name": "disc"}])
    ev.update(Instances.from_masks(true), Instances.from_masks(small, scores=[0.9]))
    m = ev.compute()
    assert m["segm_AP"] == pytest.approx(0.6) and m["boundary_AP"] == pytest.approx(0.0)
    exact = Evaluator([{"id": 1, "name": "disc"}])
    exact.update(Instances.from_masks(true), Instances.from_masks(true, scores=[0.9]))
    assert exact.compute()["boundary_AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="faster_coco_eval"):
        coco_evaluate(ev.gt_dataset(), ev.results, iou_type="boundary", backend="pycocotools")
