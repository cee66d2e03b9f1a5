"""Where a method's errors are, which score threshold to ship, and which labels look wrong.

Everything here reads a COCO ground-truth dict and COCO results (RLE masks) — what
:class:`~segbench.eval.metrics.Evaluator` holds, or any results file — and matches them with one matcher,
:func:`match_greedy`: COCO's own rule (detections in descending score order, each taking the unmatched
object of its class with the highest mask IoU at or above the threshold). It is written here rather than
taken from TIDE (``tidecv``, unmaintained since 2021 and not installable with current numpy) so that the
error categories, the calibrated thresholds and the label-error finder share one definition of a match.

* :func:`confusion_matrix` — classes + background at mask IoU 0.5, counts and row-normalised;
* :func:`error_breakdown` — every detection and every missed object in TIDE's categories (Bolya et al.,
  ECCV 2020): classification, localisation, both, duplicate, background, missed (counts, not TIDE's dAP);
* :func:`calibrate_thresholds` — per class, the score threshold that maximises F1 at IoU 0.5;
* :func:`per_image_table` — TP / FP / FN, F1 and mean IoU of matches, one row per image;
* :func:`find_label_errors` — confident detections that match no object (a missing label?), objects that
  no method finds (a wrong label?), confident matches of another class; and a COCO patch of them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

#: TIDE's background threshold: a detection overlapping every object by less than this is background.
BACKGROUND_IOU = 0.1
ERROR_KINDS = ("classification", "localisation", "both", "duplicate", "background", "missed")


@dataclass
class ImagePairs:
    """One image's non-crowd objects and detections with their mask IoU matrix ``ious[D, G]``."""

    image: dict
    gt: list[dict]
    dt: list[dict]  # sorted by descending score
    ious: np.ndarray


def _rle(seg: dict) -> dict:
    return {"size": seg["size"], "counts": seg["counts"]}


def pair_images(
    gt: Mapping, results: Sequence[Mapping], *, score_threshold: float | None = None
) -> list[ImagePairs]:
    """Group objects and detections by image and compute each image's mask IoU matrix once.

    Crowd regions are left out (as objects and as matches); detections below ``score_threshold`` too.
    """
    by_img_gt: dict = defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0) and "segmentation" in a:
            by_img_gt[a["image_id"]].append(a)
    by_img_dt: dict = defaultdict(list)
    for r in results:
        if "segmentation" in r and (score_threshold is None or r["score"] >= score_threshold):
            by_img_dt[r["image_id"]].append(r)
    out = []
    for im in gt["images"]:
        g = by_img_gt.get(im["id"], [])
        d = sorted(by_img_dt.get(im["id"], []), key=lambda r: -r["score"])
        if g and d:
            ious = np.asarray(
                mask_utils.iou(
                    [_rle(x["segmentation"]) for x in d], [_rle(x["segmentation"]) for x in g], [0] * len(g)
                ),
                dtype=np.float64,
            ).reshape(len(d), len(g))
        else:
            ious = np.zeros((len(d), len(g)))
        out.append(ImagePairs(im, g, d, ious))
    return out


def match_greedy(p: ImagePairs, *, iou_threshold: float = 0.5, class_aware: bool = True) -> np.ndarray:
    """COCO's matching of one image: ``match[d]`` is the index of the object detection ``d`` took, or -1."""
    taken = np.zeros(len(p.gt), bool)
    match = np.full(len(p.dt), -1)
    for k, det in enumerate(p.dt):
        iou = p.ious[k].copy()
        if class_aware:
            iou[[g["category_id"] != det["category_id"] for g in p.gt]] = -1
        iou[taken] = -1
        if len(iou) and iou.max() >= iou_threshold:
            j = int(iou.argmax())
            taken[j] = True
            match[k] = j
    return match


def confusion_matrix(
    gt: Mapping,
    results: Sequence[Mapping],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float | None = None,
) -> dict:
    """Objects against detections by class, at mask IoU ``iou_threshold``.

    Each image's detections and objects are paired one to one by maximum IoU regardless of class (so a
    right mask with the wrong class lands off the diagonal); a pair counts only at IoU >= the threshold.
    Rows are the true class (last row: background, i.e. detections of nothing), columns the predicted
    class (last column: background, i.e. missed objects).

    Returns
    -------
    dict
        ``classes`` (names, then ``"background"``), ``counts`` ``(K+1, K+1)`` ints, ``normalised`` (each
        row divided by its sum; background row by its own sum), ``iou_threshold``, ``score_threshold``.

    >>> sq = {"size": [4, 4], "counts": "04000"}  # a 4x4 image, all foreground
    >>> gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": sq}]}
    >>> confusion_matrix(gt, [{"image_id": 1, "category_id": 2, "score": 1.0, "segmentation": sq}])["counts"]
    [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    """
    cats = [c["id"] for c in gt["categories"]]
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    for p in pair_images(gt, results, score_threshold=score_threshold):
        matched_g, matched_d = set(), set()
        if p.ious.size:
            rows, cols = linear_sum_assignment(-p.ious)
            for d, g in zip(rows, cols, strict=True):
                if p.ious[d, g] >= iou_threshold:
                    counts[index[p.gt[g]["category_id"]], index[p.dt[d]["category_id"]]] += 1
                    matched_g.add(g)
                    matched_d.add(d)
        for g, a in enumerate(p.gt):
            if g not in matched_g:
                counts[index[a["category_id"]], k] += 1
        for d, r in enumerate(p.dt):
            if d not in matched_d:
                counts[k, index[r["category_id"]]] += 1
    sums = counts.sum(axis=1, keepdims=True)
    normalised = np.where(sums > 0, counts / np.maximum(sums, 1), 0.0)
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
    return {
        "classes": [names[c] for c in cats] + ["background"],
        "counts": counts.tolist(),
        "normalised": normalised.round(4).tolist(),
        "iou_threshold": iou_threshold,
        "score_threshold": score_threshold,
    }


def error_breakdown(
    gt: Mapping,
    results: Sequence[Mapping],
    *,
    iou_threshold: float = 0.5,
    background_iou: float = BACKGROUND_IOU,
    score_threshold: float | None = None,
) -> dict:
    """Every false positive and every missed object in TIDE's categories.

    A detection that does not take an object of its class (:func:`match_greedy`) is, in this order:
    ``duplicate`` (IoU >= ``iou_threshold`` with an object of its class already taken by a higher-scoring
    detection), ``classification`` (IoU >= ``iou_threshold`` with an object of another class),
    ``localisation`` (``background_iou`` <= IoU < ``iou_threshold`` with an object of its class), ``both``
    (the same with an object of another class), else ``background``. An object taken by no detection and
    not the target of a classification / localisation / both error is ``missed``.

    Returns
    -------
    dict
        ``true_positives``, ``counts`` (per kind), ``fractions`` (of all errors), ``examples`` (the first
        few of each kind: image id, detection score, best IoU), and the thresholds.
    """
    counts = dict.fromkeys(ERROR_KINDS, 0)
    examples: dict[str, list] = {k: [] for k in ERROR_KINDS}
    tps = 0
    for p in pair_images(gt, results, score_threshold=score_threshold):
        match = match_greedy(p, iou_threshold=iou_threshold)
        tps += int((match >= 0).sum())
        explained = set(int(j) for j in match[match >= 0])
        same = np.array([[g["category_id"] == d["category_id"] for g in p.gt] for d in p.dt], bool).reshape(
            len(p.dt), len(p.gt)
        )
        for k in np.flatnonzero(match < 0):
            iou = p.ious[k]
            s, o = np.where(same[k], iou, 0.0), np.where(~same[k], iou, 0.0)
            if s.size and s.max() >= iou_threshold:
                kind, j = "duplicate", int(s.argmax())
            elif o.size and o.max() >= iou_threshold:
                kind, j = "classification", int(o.argmax())
            elif s.size and s.max() >= background_iou:
                kind, j = "localisation", int(s.argmax())
            elif o.size and o.max() >= background_iou:
                kind, j = "both", int(o.argmax())
            else:
                kind, j = "background", None
            if kind in ("classification", "localisation", "both"):
                explained.add(j)
            counts[kind] += 1
            if len(examples[kind]) < 5:
                best = float(iou.max()) if iou.size else 0.0
                examples[kind].append(
                    {"image_id": p.image["id"], "score": float(p.dt[k]["score"]), "best_iou": round(best, 4)}
                )
        for j, a in enumerate(p.gt):
            if j not in explained:
                counts["missed"] += 1
                if len(examples["missed"]) < 5:
                    examples["missed"].append({"image_id": p.image["id"], "ann_id": a.get("id")})
    total = sum(counts.values())
    return {
        "true_positives": tps,
        "counts": counts,
        "fractions": {k: (v / total if total else 0.0) for k, v in counts.items()},
        "examples": examples,
        "iou_threshold": iou_threshold,
        "background_iou": background_iou,
        "score_threshold": score_threshold,
        "matcher": "segbench.eval.analysis.match_greedy (COCO's greedy rule); TIDE's categories, counted",
    }


#: The score a detection needs when no threshold is given and its class has none calibrated.
DEFAULT_SCORE_THRESHOLD = 0.5


def lowest_kept_score(calibrated, score_threshold: float | None = None) -> float:
    """The lowest score a detection can have and still be kept: ``score_threshold`` when it is given,
    else the lowest of the per-class ``calibrated`` thresholds and :data:`DEFAULT_SCORE_THRESHOLD` (a class
    without a calibrated threshold uses the default). ``calibrated``: the thresholds (``None`` skipped).

    >>> lowest_kept_score([0.3, None]), lowest_kept_score([]), lowest_kept_score([0.3], 0.7)
    (0.3, 0.5, 0.7)
    """
    if score_threshold is not None:
        return float(score_threshold)
    return min([DEFAULT_SCORE_THRESHOLD, *(float(v) for v in calibrated if v is not None)])


def calibrate_thresholds(gt: Mapping, results: Sequence[Mapping], *, iou_threshold: float = 0.5) -> dict:
    """Per class, the score threshold that maximises F1 at mask IoU ``iou_threshold``.

    Matching is COCO's greedy rule in descending score order, so the matches of the detections above any
    threshold do not depend on those below it: F1 at "keep the ``n`` best" is ``2 TP(n) / (n + objects)``
    for every ``n`` at once. The threshold is the score of the last detection kept (use ``score >=``).

    Returns
    -------
    dict
        ``{category name: {"threshold", "f1", "precision", "recall", "objects", "detections"}}``;
        ``threshold`` is ``None`` for a class with no object or no correct detection.

    >>> sq = {"size": [4, 4], "counts": "04000"}
    >>> gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": sq}]}
    >>> calibrate_thresholds(gt, [{"image_id": 1, "category_id": 1, "score": 0.2, "segmentation": sq}])["a"]["threshold"]
    0.2
    """
    scores: dict = defaultdict(list)
    hits: dict = defaultdict(list)
    n_gt: dict = defaultdict(int)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            n_gt[a["category_id"]] += 1
    for p in pair_images(gt, results):
        match = match_greedy(p, iou_threshold=iou_threshold)
        for det, m in zip(p.dt, match, strict=True):
            scores[det["category_id"]].append(float(det["score"]))
            hits[det["category_id"]].append(m >= 0)
    out = {}
    for c in gt["categories"]:
        cid, name = c["id"], c.get("name", str(c["id"]))
        s, h, g = np.asarray(scores[cid]), np.asarray(hits[cid], bool), n_gt[cid]
        entry = {
            "threshold": None,
            "f1": 0.0,
            "precision": None,
            "recall": None,
            "objects": g,
            "detections": len(s),
        }
        if g and s.size and h.any():
            order = np.argsort(-s, kind="stable")
            s, h = s[order], h[order]
            tp = np.cumsum(h)
            n = np.arange(1, len(s) + 1)
            f1 = 2 * tp / (n + g)
            # ties in score must be kept together: only cut where the next score is lower
            cut = np.append(s[1:] < s[:-1], True)
            f1 = np.where(cut, f1, -1)
            best = int(np.argmax(f1))
            entry.update(
                threshold=float(s[best]),
                f1=float(f1[best]),
                precision=float(tp[best] / n[best]),
                recall=float(tp[best] / g),
            )
        out[name] = entry
    return out


def per_image_table(images: Sequence[Mapping], matches: Sequence) -> list[dict]:
    """One row per image from the evaluator's one-to-one matches (:class:`~segbench.eval.metrics.ImageMatch`):
    ``image_id``, ``file_name``, ``tp``, ``fp``, ``fn``, ``f1``, ``mean_iou`` (of the matched pairs)."""
    rows = []
    for im, m in zip(images, matches, strict=True):
        rows.append(
            {
                "image_id": im["id"],
                "file_name": im.get("file_name", ""),
                "tp": m.tp,
                "fp": m.fp,
                "fn": m.fn,
                "f1": round(m.f1, 4),
                "mean_iou": round(float(np.mean(m.matched_ious)), 4) if m.matched_ious else None,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Suspected label errors
# --------------------------------------------------------------------------------------------------
def _threshold_of(thresholds: Mapping | float | None, name: str, default: float) -> float:
    if thresholds is None:
        return default
    if isinstance(thresholds, int | float):
        return float(thresholds)
    t = thresholds.get(name)
    t = t.get("threshold") if isinstance(t, Mapping) else t
    return default if t is None else float(t)


def find_label_errors(
    gt: Mapping,
    results: Sequence[Mapping],
    *,
    other_results: Sequence[Sequence[Mapping]] = (),
    thresholds: Mapping | float | None = None,
    default_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    background_iou: float = BACKGROUND_IOU,
) -> dict:
    """Suspected label errors, ranked, and a COCO patch of them.

    ``results`` are the trusted method's (the model's); a detection counts when its score reaches its
    class's threshold (``thresholds``: per class name, e.g. :func:`calibrate_thresholds`, or one number;
    else ``default_threshold``).

    * ``missing_label`` — a confident detection whose mask IoU with every object is below
      ``background_iou``: an object nobody labelled? Ranked by score.
    * ``not_found`` — an object that no confident detection of ``results`` nor any detection of
      ``other_results`` (e.g. the baselines) overlaps at IoU >= ``iou_threshold``: a label of nothing?
      Ranked by its best IoU (lowest first), then by area (largest first).
    * ``class_disagrees`` — a confident detection that covers an object at IoU >= ``iou_threshold`` with
      another class, and no detection of the object's own class does. Ranked by score.

    Returns
    -------
    dict
        ``errors`` (list of dicts: ``kind``, ``rank``, ``image_id``, ``file_name``, ``bbox`` xywh, ``score``,
        ``category``, ``ann_id``, ``suggested_category``, ``best_iou``), ``counts`` and ``patch`` — a COCO
        dataset of the affected images whose annotations are the suggestions: ``missing_label``
        detections as new annotations, ``not_found`` / ``class_disagrees`` objects copied with their id; each
        annotation carries ``"segbench": {"suggestion": ...}``. Import it into the annotation tool to review.
    """
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
    conf = [
        r
        for r in results
        if r["score"] >= _threshold_of(thresholds, names.get(r["category_id"], ""), default_threshold)
    ]
    pairs = pair_images(gt, conf)
    others = [pair_images(gt, rs) for rs in other_results]
    found: list[dict] = []
    for k, p in enumerate(pairs):
        im = p.image
        best_g = p.ious.max(axis=0) if p.ious.size else np.zeros(len(p.gt))
        for o in others:
            q = o[k]
            if q.ious.size:
                best_g = np.maximum(best_g, q.ious.max(axis=0))
        best_d = p.ious.max(axis=1) if p.ious.size else np.zeros(len(p.dt))
        for d, det in enumerate(p.dt):
            if best_d[d] < background_iou:
                found.append(
                    _entry("missing_label", im, det, score=det["score"], best_iou=best_d[d], names=names)
                )
        for g, ann in enumerate(p.gt):
            if best_g[g] < iou_threshold:
                found.append(_entry("not_found", im, ann, best_iou=best_g[g], names=names))
        for g, ann in enumerate(p.gt):
            col = p.ious[:, g] if p.ious.size else np.zeros(0)
            own = [
                d
                for d in range(len(p.dt))
                if p.dt[d]["category_id"] == ann["category_id"] and col[d] >= iou_threshold
            ]
            other = [
                d
                for d in range(len(p.dt))
                if p.dt[d]["category_id"] != ann["category_id"] and col[d] >= iou_threshold
            ]
            if other and not own:
                d = max(other, key=lambda i: p.dt[i]["score"])
                e = _entry("class_disagrees", im, ann, score=p.dt[d]["score"], best_iou=col[d], names=names)
                e["suggested_category"] = names.get(p.dt[d]["category_id"])
                found.append(e)
    order = {
        "missing_label": lambda e: -e["score"],
        "not_found": lambda e: (e["best_iou"], -e["area"]),
        "class_disagrees": lambda e: -e["score"],
    }
    errors = []
    for kind, key in order.items():
        group = sorted((e for e in found if e["kind"] == kind), key=key)
        for rank, e in enumerate(group, 1):
            errors.append({**e, "rank": rank})
    return {
        "errors": errors,
        "counts": {kind: sum(e["kind"] == kind for e in errors) for kind in order},
        "patch": _patch(gt, errors),
        "thresholds": {"iou": iou_threshold, "background_iou": background_iou},
    }


def _entry(kind: str, image: Mapping, obj: Mapping, *, names: Mapping, score=None, best_iou=0.0) -> dict:
    seg = obj["segmentation"]
    return {
        "kind": kind,
        "image_id": image["id"],
        "file_name": image.get("file_name", ""),
        "bbox": [round(float(v), 2) for v in mask_utils.toBbox(_rle(seg))],
        "area": float(mask_utils.area(_rle(seg))),
        "score": None if score is None else float(score),
        "category": names.get(obj["category_id"]),
        "category_id": obj["category_id"],
        "ann_id": obj.get("source_id", obj.get("id")) if kind != "missing_label" else None,
        "suggested_category": None,
        "best_iou": round(float(best_iou), 4),
        "segmentation": seg,
    }


def _patch(gt: Mapping, errors: Sequence[Mapping]) -> dict:
    ids = {e["image_id"] for e in errors}
    next_id = 1 + max((int(a["id"]) for a in gt["annotations"] if isinstance(a.get("id"), int)), default=0)
    anns = []
    advice = {
        "missing_label": "add: a confident detection matches no label",
        "not_found": "check: no method finds this label",
        "class_disagrees": "relabel?: the model covers it with another class",
    }
    for e in errors:
        ann = {
            "image_id": e["image_id"],
            "category_id": e["category_id"],
            "segmentation": e["segmentation"],
            "bbox": e["bbox"],
            "area": e["area"],
            "iscrowd": 0,
            "segbench": {"suggestion": advice[e["kind"]], "rank": e["rank"], "score": e["score"]},
        }
        if e["ann_id"] is None:
            ann["id"] = next_id
            next_id += 1
        else:
            ann["id"] = e["ann_id"]
        if e["suggested_category"]:
            ann["segbench"]["suggested_category"] = e["suggested_category"]
        anns.append(ann)
    return {
        "images": [im for im in gt["images"] if im["id"] in ids],
        "categories": list(gt["categories"]),
        "annotations": anns,
    }


def thresholds_by_name(calibrated: Mapping[str, Mapping]) -> dict[str, float | None]:
    """``{class name: threshold}`` from :func:`calibrate_thresholds` (what checkpoints and cards store),
    rounded *down* to 6 decimals so that the detection that set a threshold still passes it."""
    return {
        name: (None if e["threshold"] is None else math.floor(float(e["threshold"]) * 1e6) / 1e6)
        for name, e in calibrated.items()
    }


def analyse(gt: Mapping, results: Sequence[Mapping], *, score_threshold: float | None = None) -> dict:
    """The error analysis of one method: ``confusion`` (:func:`confusion_matrix`), ``errors``
    (:func:`error_breakdown`), both on the detections with ``score >= score_threshold``, and ``calibrated``
    (:func:`calibrate_thresholds`, on every detection)."""
    return {
        "confusion": confusion_matrix(gt, results, score_threshold=score_threshold),
        "errors": error_breakdown(gt, results, score_threshold=score_threshold),
        "calibrated": calibrate_thresholds(gt, results),
    }
