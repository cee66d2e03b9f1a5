"""The one place where segbench computes scores.

* COCO AP (segm and bbox) is computed by ``faster-coco-eval`` (default; a C++ port of the COCO API with
  identical numbers) or by ``pycocotools``. Nothing here re-implements AP: the summary numbers are read
  from the evaluator's accumulated ``precision`` / ``recall`` arrays exactly as ``COCOeval.summarize``
  reads them, so the detections-per-image cap can be chosen freely.
* Scores that need no confidence — one-to-one matching at an IoU threshold (precision, recall, F1,
  panoptic quality) and foreground IoU / Dice — use ``pycocotools.mask.iou`` for the IoU matrix and
  ``scipy.optimize.linear_sum_assignment`` for the matching.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from segbench.types import BoxFormat, Instances, SegbenchError, convert_boxes

log = logging.getLogger(__name__)

AREA_LABELS = ("all", "small", "medium", "large")
IOU_TYPES = ("segm", "bbox", "boundary")
#: IoU types scored on masks: ``boundary`` is Boundary IoU (Cheng et al., CVPR 2021) as faster-coco-eval
#: computes it — the smaller of the mask IoU and the IoU of the two masks' inner boundary bands (2 % of
#: the image diagonal wide) — so a mask right in place but wrong at its edges scores low.
MASK_IOU_TYPES = ("segm", "boundary")
BACKENDS = ("faster_coco_eval", "pycocotools")


# --------------------------------------------------------------------------------------------------
# COCO AP
# --------------------------------------------------------------------------------------------------
def _copy_dataset(dataset: dict) -> dict:
    """A copy that the COCO APIs may annotate freely.

    They add or replace keys of each image, annotation and result dict (``ignore``, ``area``, ``id``,
    ``segmentation`` converted to RLE) but never change the values inside, so copying each dict is enough —
    and much cheaper than a deep copy of thousands of RLE masks.
    """
    out = dict(dataset)
    for key in ("images", "annotations", "categories"):
        if key in out:
            out[key] = [dict(x) for x in out[key]]
    return out


def _make_coco(dataset: dict, backend: str):
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO

        return COCO(_copy_dataset(dataset))
    if backend == "pycocotools":
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = _copy_dataset(dataset)
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    raise ValueError(f"unknown metrics backend {backend!r}; choose one of {BACKENDS}")


def _make_eval(gt, dt, iou_type: str, backend: str):
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCOeval_faster

        # one thread: per-image IoU work is small, a thread pool only adds hand-offs (measured 2x slower)
        return COCOeval_faster(
            gt, dt, iou_type, print_function=log.debug, rle_iou_max_workers=1, boundary_cpu_count=1
        )
    if iou_type == "boundary":
        raise ValueError("boundary AP needs backend=faster_coco_eval (pycocotools has no boundary IoU)")
    from pycocotools.cocoeval import COCOeval

    return COCOeval(gt, dt, iou_type)


def _load_results(gt, results: list[dict], backend: str):
    if backend == "pycocotools" and not results:
        # pycocotools cannot load an empty result list; an empty result set is an empty COCO.
        return _make_coco(
            {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []},
            backend,
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([dict(r) for r in results])


def _mean_valid(a: np.ndarray) -> float | None:
    v = a[a > -1]
    return float(np.mean(v)) if v.size else None


def _read_stats(E, iou_type: str, cat_names: dict[int, str] | None) -> dict:
    """Summary numbers from an accumulated evaluator, read the way ``COCOeval.summarize`` reads them."""
    p = E.params
    prec = np.asarray(E.eval["precision"])  # [T, R, K, A, M]
    rec = np.asarray(E.eval["recall"])  # [T, K, A, M]
    iou_thrs = np.asarray(p.iouThrs)
    m = len(p.maxDets) - 1  # the largest cap
    a = {lbl: i for i, lbl in enumerate(p.areaRngLbl)}

    def t_index(thr: float) -> int:
        return int(np.flatnonzero(np.isclose(iou_thrs, thr))[0])

    out = {
        "AP": _mean_valid(prec[:, :, :, a["all"], m]),
        "AP50": _mean_valid(prec[t_index(0.5), :, :, a["all"], m]),
        "AP75": _mean_valid(prec[t_index(0.75), :, :, a["all"], m]),
        "APs": _mean_valid(prec[:, :, :, a["small"], m]),
        "APm": _mean_valid(prec[:, :, :, a["medium"], m]),
        "APl": _mean_valid(prec[:, :, :, a["large"], m]),
    }
    # AP at each IoU threshold (0.50, 0.55, ..., 0.95): where a method's masks stop holding up
    out["AP_by_iou"] = {f"{t:.2f}": _mean_valid(prec[k, :, :, a["all"], m]) for k, t in enumerate(iou_thrs)}
    for i, md in enumerate(p.maxDets):
        out[f"AR{md}"] = _mean_valid(rec[:, :, a["all"], i])
    out["AR"] = _mean_valid(rec[:, :, a["all"], m])
    if cat_names is not None and p.useCats:
        per_class = {}
        for k, cat_id in enumerate(p.catIds):
            per_class[cat_names.get(cat_id, str(cat_id))] = _mean_valid(prec[:, :, k, a["all"], m])
        out["per_class_AP"] = per_class
    return out


def coco_evaluate(
    gt: dict,
    results: Sequence[dict],
    *,
    iou_type: str = "segm",
    max_dets: int | None = None,
    class_agnostic: bool = False,
    backend: str = "faster_coco_eval",
) -> dict:
    """COCO AP of a results list against a COCO ground-truth dict.

    Parameters
    ----------
    gt : dict
        A COCO instances dataset (``images``, ``annotations``, ``categories``); crowd regions
        (``iscrowd=1``) are ignored regions, as in COCO.
    results : list of dict
        COCO results: ``image_id``, ``category_id``, ``score`` and ``segmentation`` (RLE) for ``segm``
        or ``bbox`` (xywh) for ``bbox``.
    iou_type : {"segm", "bbox", "boundary"}
        ``boundary``: Boundary IoU (:data:`MASK_IOU_TYPES`), faster-coco-eval only.
    max_dets : int, optional
        Detections kept per image (highest scores first). ``None`` keeps them all: the cap becomes
        ``max(100, most detections in one image)``, so nothing is silently truncated.
    class_agnostic : bool
        Ignore categories (every detection may match every object).
    backend : {"faster_coco_eval", "pycocotools"}

    Returns
    -------
    dict
        ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (``None`` where there is nothing to score,
        COCO's -1), ``AR1``, ``AR10``, ``AR<max_dets>``, ``AR``, ``per_class_AP`` (class-aware only),
        ``max_dets`` and ``truncated_images`` (images with more detections than the cap).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    E, cap, truncated = _accumulated_eval(
        gt, results, iou_type=iou_type, max_dets=max_dets, class_agnostic=class_agnostic, backend=backend
    )
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt.get("categories", [])}
    stats = _read_stats(E, iou_type, None if class_agnostic else names)
    stats["max_dets"] = cap
    stats["truncated_images"] = truncated
    return stats


# --------------------------------------------------------------------------------------------------
# Conversion between Instances and COCO dicts
# --------------------------------------------------------------------------------------------------
def instances_to_coco_annotations(
    inst: Instances, image_id: int, label_to_cat_id: dict[int, int] | None = None, start_id: int = 1
) -> list[dict]:
    """Ground-truth COCO annotations (RLE segmentation, xywh bbox, mask area) for one image."""
    rles = inst.get_rles() if inst.has_masks else None
    areas = inst.areas() if inst.has_masks else None
    boxes = convert_boxes(inst.boxes, BoxFormat.XYXY, BoxFormat.XYWH)
    source_ids = inst.extra.get("ann_ids")
    if source_ids is not None and len(source_ids) != len(inst):
        source_ids = None
    anns = []
    for i in range(len(inst)):
        lbl = int(inst.labels[i])
        ann = {
            "id": start_id + i,
            "image_id": int(image_id),
            "category_id": label_to_cat_id[lbl] if label_to_cat_id else lbl,
            "bbox": [float(v) for v in boxes[i]],
            "iscrowd": int(inst.iscrowd[i]),
        }
        if source_ids is not None:  # the annotation's id in the user's file (for label-error patches)
            ann["source_id"] = source_ids[i]
        if rles is not None:
            ann["segmentation"] = rles[i]
            ann["area"] = float(areas[i])
        else:
            ann["area"] = float(boxes[i, 2] * boxes[i, 3])
        anns.append(ann)
    return anns


def instances_to_results(
    inst: Instances, image_id: int, label_to_cat_id: dict[int, int] | None = None
) -> list[dict]:
    """COCO results (RLE segmentation, xywh bbox, score) for one image's predictions."""
    if inst.scores is None:
        raise ValueError("predictions need scores to be written as COCO results")
    rles = inst.get_rles() if inst.has_masks else None
    boxes = convert_boxes(inst.boxes, BoxFormat.XYXY, BoxFormat.XYWH)
    out = []
    for i in range(len(inst)):
        lbl = int(inst.labels[i])
        r = {
            "image_id": int(image_id),
            "category_id": label_to_cat_id[lbl] if label_to_cat_id else lbl,
            "bbox": [round(float(v), 3) for v in boxes[i]],
            "score": float(inst.scores[i]),
        }
        if rles is not None:
            r["segmentation"] = rles[i]
        out.append(r)
    return out


# --------------------------------------------------------------------------------------------------
# Scores without confidence: matching at an IoU threshold, foreground overlap
# --------------------------------------------------------------------------------------------------
@dataclass
class ImageMatch:
    """One-to-one matching of one image's predictions with its (non-crowd) ground truth."""

    tp: int
    fp: int
    fn: int
    iou_sum: float
    matched_ious: list[float] = field(default_factory=list)
    fg_intersection: float = 0.0
    fg_union: float = 0.0
    fg_gt: float = 0.0
    fg_pred: float = 0.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 1.0 if d == 0 else 2 * self.tp / d

    @property
    def pq(self) -> float:
        d = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return 1.0 if d == 0 else self.iou_sum / d


def _rles(inst: Instances) -> list[dict]:
    rles = inst.get_rles()
    return [{"size": r["size"], "counts": r["counts"]} for r in rles]


def match_image(
    gt: Instances,
    pred: Instances,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float | None = None,
    class_aware: bool = False,
) -> ImageMatch:
    """Match the predictions of one image to its ground truth, one to one, by mask IoU.

    Pairs are chosen by maximum-IoU assignment and kept when IoU >= ``iou_threshold`` (for a threshold
    of 0.5 or more the matching is unique anyway). A prediction that overlaps a crowd region by at least
    ``iou_threshold`` of its own area is ignored, as in COCO. Predictions below ``score_threshold``
    are dropped first.
    """
    if gt.image_size != pred.image_size:
        raise ValueError(f"ground truth is {gt.image_size} but prediction is {pred.image_size}")
    if score_threshold is not None and pred.scores is not None and len(pred):
        pred = pred.select(pred.scores >= score_threshold)
    crowd = gt.iscrowd.astype(bool)
    g = gt.select(~crowd) if crowd.any() else gt
    gr, pr = (_rles(g) if len(g) else []), (_rles(pred) if len(pred) else [])
    m = ImageMatch(tp=0, fp=0, fn=0, iou_sum=0.0)

    # Foreground overlap (crowd pixels count as neither).
    h, w = gt.image_size
    empty = mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]
    g_union = mask_utils.merge(gr) if gr else empty
    p_union = mask_utils.merge(pr) if pr else empty
    if crowd.any():
        c_union = mask_utils.merge(_rles(gt.select(crowd)))
        not_crowd = mask_utils.encode(
            np.asfortranarray(1 - mask_utils.decode(c_union)[..., None].astype(np.uint8))
        )[0]
        g_union = mask_utils.merge([g_union, not_crowd], intersect=True)
        p_union = mask_utils.merge([p_union, not_crowd], intersect=True)
    inter = mask_utils.merge([g_union, p_union], intersect=True)
    m.fg_intersection = float(mask_utils.area(inter))
    m.fg_gt = float(mask_utils.area(g_union))
    m.fg_pred = float(mask_utils.area(p_union))
    m.fg_union = m.fg_gt + m.fg_pred - m.fg_intersection

    matched_pred = np.zeros(len(pr), dtype=bool)
    if gr and pr:
        ious = np.asarray(mask_utils.iou(pr, gr, [0] * len(gr)), dtype=np.float64).reshape(len(pr), len(gr))
        if class_aware:
            ious = np.where(pred.labels[:, None] == g.labels[None, :], ious, 0.0)
        rows, cols = linear_sum_assignment(-ious)
        ok = ious[rows, cols] >= iou_threshold
        m.tp = int(ok.sum())
        m.matched_ious = [float(v) for v in ious[rows[ok], cols[ok]]]
        m.iou_sum = float(sum(m.matched_ious))
        matched_pred[rows[ok]] = True
    m.fn = len(gr) - m.tp
    unmatched = np.flatnonzero(~matched_pred)
    if len(unmatched) and crowd.any():
        cr = _rles(gt.select(crowd))
        ioa = np.asarray(mask_utils.iou([pr[i] for i in unmatched], cr, [1] * len(cr))).reshape(
            len(unmatched), len(cr)
        )
        unmatched = unmatched[ioa.max(axis=1) < iou_threshold]
    m.fp = len(unmatched)
    return m


def summarize_matches(matches: Sequence[ImageMatch]) -> dict:
    """Dataset-level precision, recall, F1, PQ (with SQ and RQ), foreground IoU and Dice."""
    tp = sum(x.tp for x in matches)
    fp = sum(x.fp for x in matches)
    fn = sum(x.fn for x in matches)
    iou_sum = sum(x.iou_sum for x in matches)
    inter = sum(x.fg_intersection for x in matches)
    union = sum(x.fg_union for x in matches)
    size = sum(x.fg_gt + x.fg_pred for x in matches)
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    sq = iou_sum / tp if tp else 0.0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else 1.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pq": sq * rq if tp else (1.0 if (fp + fn) == 0 else 0.0),
        "sq": sq,
        "rq": rq,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "fg_iou": inter / union if union else 1.0,
        "fg_dice": 2 * inter / size if size else 1.0,
    }


def matching_scores(
    gts: Sequence[Instances],
    preds: Sequence[Instances],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float | None = None,
    class_aware: bool = False,
) -> dict:
    """Precision, recall, F1, PQ, foreground IoU and Dice of predictions against ground truth.

    Matching is per image and one-to-one at ``iou_threshold`` (see :func:`match_image`); counts are
    summed over images before the ratios are taken.

    >>> import numpy as np
    >>> m = np.zeros((1, 8, 8), bool); m[0, 2:6, 2:6] = True
    >>> gt = Instances.from_masks(m); pred = Instances.from_masks(m, scores=[0.9])
    >>> matching_scores([gt], [pred])["f1"]
    1.0
    """
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} predictions")
    matches = [
        match_image(
            g, p, iou_threshold=iou_threshold, score_threshold=score_threshold, class_aware=class_aware
        )
        for g, p in zip(gts, preds, strict=True)
    ]
    return summarize_matches(matches)


# --------------------------------------------------------------------------------------------------
# An evaluator for any segmenter
# --------------------------------------------------------------------------------------------------
class Evaluator:
    """Accumulates ground truth and predictions image by image, then scores them all at once.

    The same evaluator scores the learned model and every baseline (``update`` per image, ``compute``
    at the end). Masks are kept as RLE, so memory grows with the objects' outlines, not their pixels.

    Parameters
    ----------
    categories : list of dict
        COCO categories (``id``, ``name``) of the dataset.
    label_to_cat_id : dict, optional
        Contiguous label -> COCO category id; identity when omitted.
    max_dets : int, optional
        Detections-per-image cap for COCO AP; ``None`` keeps all (see :func:`coco_evaluate`).
    iou_types : sequence of {"segm", "bbox"}
    class_agnostic : bool
        Also compute class-agnostic AP (``<type>_agnostic_*`` keys). Always true for one category.
    score_threshold : float, optional
        Confidence below which predictions are dropped for the matching scores (F1, PQ, fg IoU).
        COCO AP always uses every detection.
    """

    def __init__(
        self,
        categories: Sequence[dict],
        *,
        label_to_cat_id: dict[int, int] | None = None,
        max_dets: int | None = None,
        iou_types: Sequence[str] = IOU_TYPES,
        class_agnostic: bool = True,
        score_threshold: float | None = None,
        match_iou: float = 0.5,
        backend: str = "faster_coco_eval",
    ) -> None:
        self.categories = [dict(c) for c in categories]
        self.label_to_cat_id = label_to_cat_id or {c["id"]: c["id"] for c in self.categories}
        self.max_dets = max_dets
        self.iou_types = tuple(iou_types)
        for t in self.iou_types:
            if t not in IOU_TYPES:
                raise ValueError(f"iou_types: {t!r} is not one of {IOU_TYPES}")
        self.class_agnostic = class_agnostic
        self.score_threshold = score_threshold
        self.match_iou = match_iou
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        self._images: list[dict] = []
        self._gt_anns: list[dict] = []
        self._results: list[dict] = []
        self._matches: list[ImageMatch] = []

    def __len__(self) -> int:
        return len(self._images)

    def update(
        self, gt: Instances, pred: Instances, *, image_id: int | None = None, file_name: str = ""
    ) -> None:
        """Add one image's ground truth and predictions (both at the image's original size)."""
        if gt.image_size != pred.image_size:
            raise ValueError(
                f"image {image_id} ({file_name}): ground truth is {gt.image_size} "
                f"but the prediction is {pred.image_size}; predict at the original image size"
            )
        image_id = len(self._images) + 1 if image_id is None else int(image_id)
        h, w = gt.image_size
        self._images.append({"id": image_id, "height": h, "width": w, "file_name": file_name})
        self._gt_anns += instances_to_coco_annotations(
            gt, image_id, self.label_to_cat_id, start_id=len(self._gt_anns) + 1
        )
        if pred.scores is None:
            pred = Instances(
                image_size=pred.image_size,
                boxes=pred.boxes,
                labels=pred.labels,
                scores=np.ones(len(pred), np.float32),
                masks=pred.masks,
                rles=pred.rles,
            )
        self._results += instances_to_results(pred, image_id, self.label_to_cat_id)
        self._matches.append(
            match_image(gt, pred, iou_threshold=self.match_iou, score_threshold=self.score_threshold)
        )

    def state(self) -> dict:
        """Everything accumulated so far (picklable), to merge evaluators of several processes."""
        return {
            "images": self._images,
            "gt": self._gt_anns,
            "results": self._results,
            "matches": self._matches,
        }

    @classmethod
    def from_states(cls, states: Sequence[dict], **kwargs) -> Evaluator:
        """One evaluator from the states of several (e.g. one per DDP rank); repeated image ids are kept once."""
        ev = cls(**kwargs)
        seen: set = set()
        for st in states:
            keep = {im["id"] for im in st["images"] if im["id"] not in seen}
            seen |= keep
            ev._images += [im for im in st["images"] if im["id"] in keep]
            ev._results += [r for r in st["results"] if r["image_id"] in keep]
            ev._matches += [m for im, m in zip(st["images"], st["matches"], strict=True) if im["id"] in keep]
            for a in st["gt"]:
                if a["image_id"] in keep:
                    ev._gt_anns.append({**a, "id": len(ev._gt_anns) + 1})
        return ev

    def gt_dataset(self) -> dict:
        return {"images": self._images, "annotations": self._gt_anns, "categories": self.categories}

    @property
    def results(self) -> list[dict]:
        return self._results

    @property
    def image_matches(self) -> list[ImageMatch]:
        return self._matches

    def compute(self) -> dict:
        """All scores as a flat dict: ``segm_AP``, ``segm_AP50``, ..., ``bbox_AP``, ``segm_agnostic_AP``,
        ``per_class_segm_AP`` (a dict), ``f1``, ``pq``, ``fg_iou``, ``fg_dice``..."""
        if not self._images:
            raise SegbenchError("nothing to evaluate: no image was added to the evaluator")
        return evaluate_coco_all(
            self.gt_dataset(),
            self._results,
            iou_types=self.iou_types,
            max_dets=self.max_dets,
            class_agnostic=self.class_agnostic,
            backend=self.backend,
            matches=self._matches,
        )


def f1_scorer(gts: Sequence[Instances], preds: Sequence[Instances]) -> float:
    """F1 of one-to-one matching at mask IoU 0.5: the scorer the baselines' fit uses to choose options.

    >>> import numpy as np
    >>> m = np.zeros((1, 8, 8), bool); m[0, 2:6, 2:6] = True
    >>> f1_scorer([Instances.from_masks(m)], [Instances.empty((8, 8))])
    0.0
    """
    return float(matching_scores(gts, preds, iou_threshold=0.5)["f1"])


def segm_ap_scorer(gts: Sequence[Instances], preds: Sequence[Instances]) -> float:
    """Class-agnostic COCO segm AP of predictions (with scores) against ground truth: the scorer that fits
    the mask refinement (it must not cost AP). 0 where nothing can be scored."""
    images, anns, results = [], [], []
    for k, (g, p) in enumerate(zip(gts, preds, strict=True)):
        h, w = g.image_size
        images.append({"id": k + 1, "height": h, "width": w})
        anns += instances_to_coco_annotations(g, k + 1, start_id=len(anns) + 1)
        if len(p):
            results += instances_to_results(p, k + 1)
    labels = sorted({a["category_id"] for a in anns} | {r["category_id"] for r in results}) or [1]
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in labels]}
    ap = coco_evaluate(gt, results, iou_type="segm", class_agnostic=True)["AP"]
    return 0.0 if ap is None else float(ap)


def evaluate_coco_all(
    gt: dict,
    results: list[dict],
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    max_dets: int | None = None,
    class_agnostic: bool = True,
    backend: str = "faster_coco_eval",
    matches: Sequence[ImageMatch] | None = None,
) -> dict:
    """Every COCO number for each IoU type (class-aware and class-agnostic), flattened to one dict."""
    out: dict = {}
    n_cats = len(gt.get("categories", []))
    for t in iou_types:
        if t in MASK_IOU_TYPES and results and "segmentation" not in results[0]:
            continue
        if t == "boundary" and backend != "faster_coco_eval":
            log.warning("boundary AP skipped: it needs backend=faster_coco_eval (pycocotools has none)")
            continue
        s = coco_evaluate(gt, results, iou_type=t, max_dets=max_dets, backend=backend)
        per_class = s.pop("per_class_AP", {})
        out.update({f"{t}_{k}": v for k, v in s.items() if k not in ("max_dets", "truncated_images")})
        out[f"per_class_{t}_AP"] = per_class
        out["max_dets"] = s["max_dets"]
        if class_agnostic:
            if n_cats == 1:
                a = {k: v for k, v in s.items()}
            else:
                a = coco_evaluate(
                    gt, results, iou_type=t, max_dets=max_dets, class_agnostic=True, backend=backend
                )
            out.update(
                {
                    f"{t}_agnostic_{k}": v
                    for k, v in a.items()
                    if k not in ("max_dets", "truncated_images", "per_class_AP")
                }
            )
    if matches is not None:
        out.update(summarize_matches(matches))
    out["num_images"] = len(gt["images"])
    out["num_gt"] = sum(1 for a in gt["annotations"] if not a.get("iscrowd", 0))
    out["num_pred"] = len(results)
    return out


# --------------------------------------------------------------------------------------------------
# Precision-recall curves (read from the COCO evaluator, never recomputed)
# --------------------------------------------------------------------------------------------------
def _accumulated_eval(
    gt: dict,
    results: Sequence[dict],
    *,
    iou_type: str,
    max_dets: int | None,
    class_agnostic: bool,
    backend: str,
):
    """An evaluated and accumulated COCO evaluator, with the detections cap it used and the number of
    images that cap truncated (logged)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    results = list(results)
    per_image: dict[int, int] = {}
    for r in results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    cap = max(100, max(per_image.values(), default=0)) if max_dets is None else max_dets
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise ValueError(f"max_dets must be a positive integer or None, got {max_dets!r}")
    truncated = sum(1 for n in per_image.values() if n > cap)
    if truncated:
        log.warning(
            "%d image(s) have more than max_dets=%d detections; only the %d best of each are scored "
            "(raise max_dets to score them all)",
            truncated,
            cap,
            cap,
        )
    cg = _make_coco(gt, backend)
    cd = _load_results(cg, results, backend)
    E = _make_eval(cg, cd, iou_type, backend)
    E.params.maxDets = sorted({1, 10, cap}) if cap >= 10 else [cap]
    if class_agnostic:
        E.params.useCats = 0
    with contextlib.redirect_stdout(io.StringIO()):
        E.evaluate()
        E.accumulate()
    return E, cap, truncated


class ResampledAP:
    """COCO AP of bootstrap resamples of the images, each resample without matching the images again.

    COCO's matching is per image (``COCOeval.evaluate``: an image's detections meet only that image's
    objects), so a resample drawn image by image — repeats allowed — has the same per-image matches as the
    full split. pycocotools' evaluator matches the full split once here and, per resample, only its own
    ``accumulate`` runs, on the drawn images' matches in the drawn order (area ``all``, the one detections
    cap): the numbers equal scoring a copy of the resample (:func:`segbench.eval.compare.resample_coco`) with
    :func:`coco_evaluate` (``backend="pycocotools"``), at a fraction of the cost (no IoU is computed
    again). Written here because neither COCO API scores resamples; the accumulation itself is theirs.

    Parameters
    ----------
    gt, results, iou_type, max_dets, class_agnostic
        As :func:`coco_evaluate` (``segm`` or ``bbox``: pycocotools has no boundary IoU).
    """

    def __init__(
        self,
        gt: dict,
        results: Sequence[dict],
        *,
        iou_type: str = "segm",
        max_dets: int | None = None,
        class_agnostic: bool = False,
    ) -> None:
        if iou_type not in ("segm", "bbox"):
            raise ValueError(f"ResampledAP scores segm or bbox, got {iou_type!r}")
        E, cap, _ = _accumulated_eval(
            gt,
            results,
            iou_type=iou_type,
            max_dets=max_dets,
            class_agnostic=class_agnostic,
            backend="pycocotools",
        )
        p = E.params
        self.cap = cap
        self.class_agnostic = class_agnostic
        names = {c["id"]: c.get("name", str(c["id"])) for c in gt.get("categories", [])}
        self.class_names = [] if class_agnostic else [names.get(c, str(c)) for c in p.catIds]
        column = {img_id: i for i, img_id in enumerate(p.imgIds)}  # evaluate sorts the image ids
        self._column = np.asarray([column[im["id"]] for im in gt["images"]], np.int64)
        k, a, i = (
            (len(p.catIds) if p.useCats else 1),
            len(p.areaRng),
            len(p.imgIds),
        )  # agnostic: one class, -1
        cells = np.empty(k * a * i, dtype=object)
        cells[:] = E.evalImgs
        self._cells = cells.reshape(k, a, i)[:, p.areaRngLbl.index("all")]  # (classes, images)
        self._eval = E
        self.full = _read_stats(E, iou_type, None if class_agnostic else names)

    def __call__(self, indices: Sequence[int]) -> dict:
        """``AP`` (and, class-aware, ``per_class_AP``) of the resample whose ``k``-th image is
        ``gt["images"][indices[k]]``; ``None`` where there is nothing to score (COCO's -1)."""
        import copy

        cols = self._column[np.asarray(indices, np.int64)]
        E = copy.copy(self._eval)  # shallow: accumulate reads evalImgs and the params, writes E.eval
        pe = copy.copy(self._eval._paramsEval)
        pe.imgIds = list(range(len(cols)))
        pe.areaRng, pe.areaRngLbl, pe.maxDets = [pe.areaRng[pe.areaRngLbl.index("all")]], ["all"], [self.cap]
        E._paramsEval = E.params = pe
        E.evalImgs = self._cells[:, cols].reshape(-1).tolist()
        with contextlib.redirect_stdout(io.StringIO()):
            E.accumulate()
        prec = np.asarray(E.eval["precision"])[:, :, :, 0, 0]  # [T, R, K]
        out: dict = {"AP": _mean_valid(prec)}
        if not self.class_agnostic:
            out["per_class_AP"] = {n: _mean_valid(prec[:, :, k]) for k, n in enumerate(self.class_names)}
        return out


def pr_curve(
    gt: dict,
    results: Sequence[dict],
    *,
    iou_type: str = "segm",
    iou_thresholds: Sequence[float] = (0.5, 0.75),
    class_agnostic: bool = True,
    max_dets: int | None = None,
    backend: str = "faster_coco_eval",
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Precision-recall curves at given IoU thresholds, as the COCO evaluator accumulates them.

    The curve is the evaluator's interpolated ``precision[T, R, K, A, M]`` array read at the IoU
    threshold ``T``, all recall thresholds ``R`` (0, 0.01, ..., 1), area ``all`` and the largest
    detections cap ``M`` — the same numbers whose mean is AP. Class-aware curves average the
    categories that have ground truth.

    Parameters
    ----------
    gt, results, iou_type, max_dets, backend
        As in :func:`coco_evaluate`.
    iou_thresholds : sequence of float
        Each must be one of COCO's thresholds 0.50, 0.55, ..., 0.95.
    class_agnostic : bool
        Ignore categories (every detection may match every object).

    Returns
    -------
    dict
        ``{iou: (recall, precision)}``, two float64 ``(101,)`` arrays. Precision is 0 beyond the
        highest recall reached and NaN everywhere when there is no ground truth.

    >>> m = np.zeros((1, 8, 8), bool); m[0, 2:6, 2:6] = True
    >>> ev = Evaluator([{"id": 1, "name": "a"}])
    >>> ev.update(Instances.from_masks(m), Instances.from_masks(m, scores=[0.9]))
    >>> r, p = pr_curve(ev.gt_dataset(), ev.results)[0.5]
    >>> float(p.min()), len(r)
    (1.0, 101)
    """
    E, _, _ = _accumulated_eval(
        gt, results, iou_type=iou_type, max_dets=max_dets, class_agnostic=class_agnostic, backend=backend
    )
    p = E.params
    prec = np.asarray(E.eval["precision"], dtype=np.float64)  # [T, R, K, A, M]
    iou_thrs = np.asarray(p.iouThrs)
    recall = np.asarray(p.recThrs, dtype=np.float64)
    a_all = list(p.areaRngLbl).index("all")
    out: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for thr in iou_thresholds:
        hit = np.flatnonzero(np.isclose(iou_thrs, float(thr)))
        if not hit.size:
            raise ValueError(
                f"iou threshold {thr!r} is not one of COCO's ({', '.join(f'{t:.2f}' for t in iou_thrs)})"
            )
        curves = prec[hit[0], :, :, a_all, -1]  # [R, K]
        valid = (curves > -1).all(axis=0)
        precision = curves[:, valid].mean(axis=1) if valid.any() else np.full(len(recall), np.nan)
        out[float(thr)] = (recall.copy(), precision)
    return out
