"""Running segmenters over a dataset and scoring result files — always through :mod:`segbench.eval.metrics`."""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from segbench.data.annotations import decode_annotation
from segbench.data.coco import CocoDataset
from segbench.eval.metrics import (
    IOU_TYPES,
    MASK_IOU_TYPES,
    Evaluator,
    coco_evaluate,
    evaluate_coco_all,
    match_image,
)
from segbench.io import read_json, to_jsonable
from segbench.types import BoxFormat, Instances, SegbenchError, Segmenter, convert_boxes

log = logging.getLogger(__name__)


def load_results(path: str | os.PathLike, gt: CocoDataset) -> list[dict]:
    """Read a COCO results JSON and check that it belongs to ``gt``.

    Raises
    ------
    SegbenchError
        Not JSON, not a list of results, unknown image or category ids (another dataset?), masks whose
        size differs from their image.
    """
    path = Path(path)
    data = read_json(path, what="results file")
    if isinstance(data, dict) and "annotations" in data:
        raise SegbenchError(
            f"{path} is a COCO dataset, not a results file; pass ground truth as gt= and results as pred= "
            "(a results file is a JSON list of {image_id, category_id, score, segmentation/bbox})"
        )
    if not isinstance(data, list):
        raise SegbenchError(f"{path}: a COCO results file is a JSON list of detections")
    image_sizes = {im["id"]: gt.image_size(i) for i, im in enumerate(gt.images)}
    unknown_img, unknown_cat, bad = set(), set(), []
    for k, r in enumerate(data):
        if not isinstance(r, dict) or "image_id" not in r or "category_id" not in r or "score" not in r:
            bad.append(f"entry {k}: needs image_id, category_id and score")
            continue
        if not ("segmentation" in r or "bbox" in r):
            bad.append(f"entry {k}: needs a segmentation or a bbox")
        if r["image_id"] not in image_sizes:
            unknown_img.add(r["image_id"])
            continue
        if r["category_id"] not in gt.cat_id_to_label:
            unknown_cat.add(r["category_id"])
        seg = r.get("segmentation")
        if isinstance(seg, dict) and list(seg.get("size", [])) != list(image_sizes[r["image_id"]]):
            bad.append(
                f"entry {k}: mask size {seg.get('size')} but image {r['image_id']} is {list(image_sizes[r['image_id']])}"
            )
        if len(bad) > 20:
            break
    if unknown_img:
        ids = sorted(unknown_img, key=str)
        raise SegbenchError(
            f"{path} refers to {len(ids)} image id(s) that {gt.ann_file} does not have (e.g. {ids[:5]}); "
            "the results were made for another dataset or split — score them against the matching gt="
        )
    if unknown_cat:
        raise SegbenchError(
            f"{path} uses category id(s) {sorted(unknown_cat, key=str)[:10]} that {gt.ann_file} does not define "
            f"(its ids: {sorted(gt.cat_id_to_label)}); write results with the dataset's original category ids"
        )
    if bad:
        raise SegbenchError(f"{path} has malformed results: " + "; ".join(bad[:5]))
    return data


def results_to_instances(results: Sequence[dict], gt: CocoDataset) -> dict[int, Instances]:
    """Group COCO results by image into :class:`Instances` (masks as RLE)."""
    by_image: dict = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    out = {}
    for i, im in enumerate(gt.images):
        h, w = gt.image_size(i)
        rs = by_image.get(im["id"], [])
        rles = [decode_annotation(r, h, w) for r in rs]  # the segmentation, else the box
        boxes = (
            convert_boxes(np.asarray([r["bbox"] for r in rs]), BoxFormat.XYWH, BoxFormat.XYXY)
            if rs and all("bbox" in r for r in rs)
            else (
                convert_boxes(mask_utils.toBbox(rles), BoxFormat.XYWH, BoxFormat.XYXY)
                if rs
                else np.zeros((0, 4))
            )
        )
        out[im["id"]] = Instances(
            image_size=(h, w),
            boxes=boxes,
            labels=[gt.cat_id_to_label[r["category_id"]] for r in rs],
            scores=[float(r["score"]) for r in rs],
            rles=rles,
        )
    return out


def score_files(
    gt_file: str | os.PathLike,
    results_file: str | os.PathLike,
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    max_dets: int | None = None,
    class_agnostic: bool = True,
    score_threshold: float | None = 0.5,
    match_iou: float = 0.5,
    backend: str = "faster_coco_eval",
) -> dict:
    """Score any COCO results file against a COCO ground-truth file.

    COCO AP is computed on the ground-truth JSON as it is (the same input pycocotools would get);
    the matching scores (F1, PQ, foreground IoU/Dice) use detections with ``score >= score_threshold``.
    """
    gt = CocoDataset(
        gt_file, image_root=Path(gt_file).parent, keep_empty_classes=True
    )  # a results file may name any category
    results = load_results(results_file, gt)
    raw_gt = read_json(gt_file, what="ground-truth file")
    has_masks = bool(results) and all("segmentation" in r for r in results)
    types = [t for t in iou_types if t not in MASK_IOU_TYPES or has_masks or not results]
    preds = results_to_instances(results, gt)
    matches = None
    if has_masks or not results:
        matches = [
            match_image(
                gt.load_instances(i),
                preds[im["id"]],
                iou_threshold=match_iou,
                score_threshold=score_threshold,
            )
            for i, im in enumerate(gt.images)
        ]
    out = evaluate_coco_all(
        raw_gt,
        results,
        iou_types=types,
        max_dets=max_dets,
        class_agnostic=class_agnostic,
        backend=backend,
        matches=matches,
    )
    return to_jsonable(out)


def evaluate_segmenter(
    segmenter: Segmenter,
    dataset: CocoDataset,
    *,
    max_dets: int | None = None,
    score_threshold: float | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[dict, Evaluator]:
    """Run a segmenter on every image of ``dataset`` and score it.

    Returns the metrics (with ``ms_per_image``) and the evaluator (which holds the COCO results
    and the per-image matches).
    """
    ev = Evaluator(
        dataset.categories,
        label_to_cat_id=dataset.label_to_cat_id,
        max_dets=max_dets,
        score_threshold=score_threshold,
    )
    n = len(dataset) if limit is None else min(limit, len(dataset))
    seconds = 0.0
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=getattr(segmenter, "name", type(segmenter).__name__), unit="img")
    for i in it:
        sample = dataset[i]
        t0 = time.perf_counter()
        pred = segmenter(sample.image)
        seconds += time.perf_counter() - t0
        ev.update(sample.instances, pred, image_id=sample.image_id, file_name=sample.file_name)
    metrics = ev.compute()
    metrics["ms_per_image"] = 1000 * seconds / max(n, 1)
    return to_jsonable(metrics), ev


#: What ``segbench score backend=all`` runs: COCO's own code, its C++ port, and torchmetrics.
ALL_BACKENDS = ("pycocotools", "faster_coco_eval", "torchmetrics")


def _torchmetrics_map(gt: CocoDataset, results: Sequence[dict], iou_type: str) -> dict:
    """torchmetrics' ``MeanAveragePrecision`` on the same files, with its defaults (it keeps at most 100
    detections per image, ``max_detection_thresholds=[1, 10, 100]``)."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="segm" if iou_type == "segm" else "bbox")
    preds = results_to_instances(results, gt)
    for i, im in enumerate(gt.images):
        g, p = gt.load_instances(i), preds[im["id"]]
        target = {
            "labels": torch.as_tensor(g.labels, dtype=torch.long),
            "iscrowd": torch.as_tensor(g.iscrowd),
        }
        pred = {"labels": torch.as_tensor(p.labels, dtype=torch.long), "scores": torch.as_tensor(p.scores)}
        if iou_type == "segm":
            target["masks"] = torch.from_numpy(g.get_masks())
            pred["masks"] = torch.from_numpy(p.get_masks())
        else:
            target["boxes"] = torch.as_tensor(g.boxes, dtype=torch.float32)
            pred["boxes"] = torch.as_tensor(p.boxes, dtype=torch.float32)
        metric.update([pred], [target])
    m = metric.compute()
    return {
        k: float(m[t]) if float(m[t]) > -1 else None
        for k, t in (("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"))
    }


def score_every_backend(
    gt_file: str | os.PathLike,
    results_file: str | os.PathLike,
    *,
    iou_types: Sequence[str] = ("segm", "bbox"),
) -> dict:
    """Class-aware AP / AP50 / AP75 of one results file by pycocotools, faster-coco-eval (each with
    segbench's default of keeping every detection, and with COCO's cap of 100 per image) and torchmetrics
    (its defaults), so that a user who sees other numbers elsewhere learns why.

    Returns ``{iou_type: {"pycocotools": {...}, "pycocotools@100": {...}, ..., "torchmetrics": {...}}}`` and
    ``notes``.
    """
    gt = CocoDataset(
        gt_file, image_root=Path(gt_file).parent, keep_empty_classes=True
    )  # a results file may name any category
    results = load_results(results_file, gt)
    raw_gt = read_json(gt_file, what="ground-truth file")
    per_image: dict = defaultdict(int)
    for r in results:
        per_image[r["image_id"]] += 1
    most = max(per_image.values(), default=0)
    out: dict = {}
    for t in iou_types:
        if t == "segm" and results and "segmentation" not in results[0]:
            continue
        row = {}
        for backend in ("pycocotools", "faster_coco_eval"):
            for cap, tag in ((None, ""), (100, "@100")):
                s = coco_evaluate(raw_gt, results, iou_type=t, max_dets=cap, backend=backend)
                row[backend + tag] = {k: s[k] for k in ("AP", "AP50", "AP75")}
        row["torchmetrics"] = _torchmetrics_map(gt, results, t)
        out[t] = row
    notes = [
        "pycocotools and faster-coco-eval compute the same COCO AP (faster-coco-eval is a C++ port); "
        "segbench reads the AP from their accumulated precision, keeping every detection unless max_dets is set.",
        "torchmetrics' MeanAveragePrecision keeps at most 100 detections per image (as COCO's own summary "
        "does) and decodes the masks itself.",
    ]
    if most > 100:
        notes.append(
            f"an image here has {most} detections (> 100): the capped numbers (@100, torchmetrics) score only "
            "the 100 best of each image, which is why they are lower."
        )
    out["notes"] = notes
    return to_jsonable(out)
