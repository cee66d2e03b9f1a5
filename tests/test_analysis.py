"""Error analysis with answers known by hand: confusion, TIDE categories, calibrated thresholds, label errors."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segbench.eval.analysis import (
    calibrate_thresholds,
    confusion_matrix,
    error_breakdown,
    find_label_errors,
    per_image_table,
)
from segbench.eval.metrics import Evaluator
from segbench.types import Instances

H = W = 64
CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def square(y: int, x: int, s: int = 10) -> dict:
    m = np.zeros((H, W, 1), np.uint8, order="F")
    m[y : y + s, x : x + s] = 1
    rle = mask_utils.encode(m)[0]
    rle["counts"] = rle["counts"].decode()
    return rle


def dataset(objects: list[tuple[int, int, int, int]]) -> dict:
    """``objects``: (image_id, category_id, y, x) of 10x10 squares."""
    images = sorted({o[0] for o in objects} | {1})
    anns = [
        {
            "id": 100 + k,
            "image_id": i,
            "category_id": c,
            "segmentation": square(y, x),
            "iscrowd": 0,
            "area": 100,
        }
        for k, (i, c, y, x) in enumerate(objects)
    ]
    return {"images": [{"id": i, "height": H, "width": W, "file_name": f"im{i}.png"} for i in images],
            "annotations": anns, "categories": CATS}  # fmt: skip


def det(image_id: int, cat: int, y: int, x: int, score: float, s: int = 10) -> dict:
    return {"image_id": image_id, "category_id": cat, "score": score, "segmentation": square(y, x, s)}


def test_confusion_matrix_counts_classes_background_and_misses():
    gt = dataset([(1, 1, 0, 0), (1, 2, 20, 20), (1, 1, 40, 40)])  # cat, dog, cat (missed)
    results = [
        det(1, 2, 0, 0, 0.9),  # the first cat, called a dog
        det(1, 2, 20, 20, 0.8),  # the dog
        det(1, 1, 50, 5, 0.7),  # a cat where there is nothing
    ]
    cm = confusion_matrix(gt, results)
    assert cm["classes"] == ["cat", "dog", "background"]
    assert cm["counts"] == [[0, 1, 1], [0, 1, 0], [1, 0, 0]]
    assert cm["normalised"][0] == [0.0, 0.5, 0.5]
    assert confusion_matrix(gt, results, score_threshold=0.75)["counts"][2] == [0, 0, 0]


def test_error_breakdown_puts_each_error_in_its_tide_category():
    gt = dataset([(1, 1, 0, 0), (1, 2, 20, 20), (1, 1, 40, 40), (1, 2, 40, 5), (1, 1, 5, 45)])
    results = [
        det(1, 1, 0, 0, 0.95),  # true positive
        det(1, 1, 0, 0, 0.90),  # duplicate of it
        det(1, 1, 20, 20, 0.85),  # the dog's mask, class cat: classification
        det(1, 1, 45, 45, 0.80),  # 5x5 px of the 10x10 cat at (40, 40): IoU 25 / 175 = 0.14: localisation
        det(1, 1, 45, 10, 0.75),  # the same shift on the dog at (40, 5), class cat: both
        det(1, 2, 25, 50, 0.70, s=5),  # nothing there: background
    ]  # the cat at (5, 45) is found by nothing: missed
    out = error_breakdown(gt, results)
    assert out["true_positives"] == 1
    assert out["counts"] == {
        "classification": 1, "localisation": 1, "both": 1, "duplicate": 1, "background": 1, "missed": 1,
    }  # fmt: skip
    assert out["fractions"]["missed"] == pytest.approx(1 / 6)


def test_calibrated_threshold_follows_scores_shifted_low():
    """A model whose right answers score 0.20-0.30 and whose mistakes score 0.05: the best F1 keeps the
    right answers (threshold 0.20, F1 1), where the default 0.5 would keep nothing."""
    objects = [(1, 1, 0, 0), (1, 1, 20, 20), (2, 2, 0, 0), (2, 1, 30, 30)]
    gt = dataset(objects)
    results = [det(i, c, y, x, s) for (i, c, y, x), s in zip(objects, [0.3, 0.2, 0.25, 0.22], strict=True)]
    results += [det(1, 1, 50, 50, 0.05), det(2, 2, 50, 0, 0.05)]
    t = calibrate_thresholds(gt, results)
    assert t["cat"]["threshold"] == pytest.approx(0.2) and t["cat"]["f1"] == pytest.approx(1.0)
    assert t["dog"]["threshold"] == pytest.approx(0.25) and t["dog"]["recall"] == 1.0
    kept = [r for r in results if r["score"] >= t[{1: "cat", 2: "dog"}[r["category_id"]]]["threshold"]]
    assert len(kept) == 4 and not [r for r in results if r["score"] >= 0.5]
    # ties are cut together: two detections of score 0.2, only one right, stay in or out together
    tie = calibrate_thresholds(dataset([(1, 1, 0, 0)]), [det(1, 1, 0, 0, 0.2), det(1, 1, 40, 40, 0.2)])
    assert tie["cat"]["f1"] == pytest.approx(2 / 3) and tie["dog"]["threshold"] is None


def test_label_errors_find_removed_and_added_objects():
    """The truth has 6 objects; the labels lost two of them and gained two that are not there. A model that
    predicts exactly the true objects exposes all four, and nothing else: precision and recall 1."""
    truth = [(1, 1, 0, 0), (1, 2, 20, 20), (1, 1, 40, 40), (2, 1, 0, 0), (2, 2, 30, 30), (2, 1, 5, 45)]
    removed = {(1, 1, 40, 40), (2, 2, 30, 30)}
    added = [(1, 2, 50, 5), (2, 1, 45, 5)]
    labels = dataset([o for o in truth if o not in removed] + added)
    preds = [det(i, c, y, x, 0.9) for (i, c, y, x) in truth]
    out = find_label_errors(labels, preds)
    missing = {(e["image_id"], tuple(e["bbox"][:2])) for e in out["errors"] if e["kind"] == "missing_label"}
    assert missing == {(1, (40.0, 40.0)), (2, (30.0, 30.0))}
    not_found = {e["ann_id"] for e in out["errors"] if e["kind"] == "not_found"}
    added_ids = {a["id"] for a in labels["annotations"][-2:]}
    assert not_found == added_ids
    assert out["counts"] == {"missing_label": 2, "not_found": 2, "class_disagrees": 0}
    patch = out["patch"]
    assert len(patch["annotations"]) == 4 and {im["id"] for im in patch["images"]} == {1, 2}
    new_ids = [a["id"] for a in patch["annotations"] if a["segbench"]["suggestion"].startswith("add")]
    assert len(new_ids) == 2 and min(new_ids) > max(a["id"] for a in labels["annotations"])


def test_label_errors_class_disagreement_and_thresholds():
    labels = dataset([(1, 1, 0, 0)])
    preds = [det(1, 2, 0, 0, 0.6)]  # right mask, other class
    out = find_label_errors(labels, preds)
    (e,) = out["errors"]
    assert e["kind"] == "class_disagrees" and e["category"] == "cat" and e["suggested_category"] == "dog"
    # below its class's threshold the detection is not trusted: the label is then "not found"
    out = find_label_errors(labels, preds, thresholds={"dog": {"threshold": 0.7}})
    assert [e["kind"] for e in out["errors"]] == ["not_found"]
    # ... unless another method (a baseline) finds the object
    out = find_label_errors(labels, preds, thresholds={"dog": 0.7}, other_results=[[det(1, 1, 0, 0, 0.1)]])
    assert out["errors"] == []


def test_per_image_table_from_the_evaluator():
    m = np.zeros((2, 32, 32), bool)
    m[0, :10, :10] = True
    m[1, 20:30, 20:30] = True
    ev = Evaluator([{"id": 1, "name": "a"}])
    ev.update(
        Instances.from_masks(m), Instances.from_masks(m[:1], scores=[0.9]), image_id=7, file_name="x.png"
    )
    (row,) = per_image_table(ev.gt_dataset()["images"], ev.image_matches)
    assert row == {
        "image_id": 7,
        "file_name": "x.png",
        "tp": 1,
        "fp": 0,
        "fn": 1,
        "f1": pytest.approx(2 / 3, abs=1e-4),
        "mean_iou": 1.0,
    }
