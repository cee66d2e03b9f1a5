"""Scoring the model and the classical baselines side by side on one split.

Every number here comes from :mod:`segbench.eval.metrics` (COCO AP through the COCO evaluator, matching
scores through :func:`~segbench.eval.metrics.match_image`); this module only decides *what* is scored:

* which methods (:func:`check_methods`), and the baselines fitted on the training split or restored from
  saved parameters (:func:`prepare_baselines`);
* one :class:`MethodResult` per method (:func:`evaluate_method`), a leaderboard sorted by class-agnostic
  segm AP (:func:`leaderboard_rows`), warnings about degenerate confidence scores
  (:func:`score_warnings`), precision-recall curves (:func:`method_pr_curves`), the images worth looking
  at (:func:`pick_images`);
* a paired bootstrap over images of the difference in class-agnostic segm AP and in F1 between two
  methods (:func:`bootstrap_difference`), every resample scored by :class:`~segbench.eval.metrics.ResampledAP`.

:func:`compare_methods` runs all of it. It takes ready segmenters, so it never imports torch: the command
(:mod:`segbench.report.cli_compare`) loads the model.

The matching scores (F1, PQ, foreground IoU / Dice) of the model use its detections with
``score >= score_threshold``; the baselines have no calibrated confidence (their scores are proxies), so
every detection they make counts. COCO AP always ranks every detection of every method.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segbench.baselines import BASELINES, BaseSegmenter, build_baseline, load_baseline
from segbench.baselines.refine import EdgeRefiner
from segbench.data.coco import CocoDataset
from segbench.eval.analysis import analyse, find_label_errors, per_image_table
from segbench.eval.metrics import (
    Evaluator,
    ResampledAP,
    f1_scorer,
    pr_curve,
    segm_ap_scorer,
    summarize_matches,
)
from segbench.eval.runner import evaluate_segmenter, results_to_instances
from segbench.types import Instances, SegbenchError, Segmenter

log = logging.getLogger(__name__)

#: The name of the learned model among the methods.
MODEL = "maskrcnn"
_AGNOSTIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------
def valid_methods() -> list[str]:
    """Every method name :func:`check_methods` accepts: the model, then the baselines."""
    return [MODEL, *BASELINES]


def check_methods(methods: Sequence[str] | str | None, *, has_model: bool) -> list[str]:
    """The methods to compare, checked.

    Parameters
    ----------
    methods : sequence of str or None
        Names from :func:`valid_methods`; ``None`` means the model (when ``has_model``) and every baseline.
        Repeated names are kept once.
    has_model : bool
        Whether a checkpoint was given.

    Raises
    ------
    SegbenchError
        Unknown names (the message lists the valid ones), ``maskrcnn`` without a checkpoint, or none left.
    """
    if methods is None:
        return ([MODEL] if has_model else []) + list(BASELINES)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    names = [str(m) for m in methods]
    unknown = [m for m in names if m not in valid_methods()]
    if unknown:
        raise SegbenchError(
            f"unknown method(s) {', '.join(map(repr, unknown))} in methods; valid methods: "
            f"{', '.join(valid_methods())} (e.g. methods=[{MODEL},threshold,kmeans])"
        )
    if MODEL in names and not has_model:
        raise SegbenchError(
            f"methods includes '{MODEL}' but no checkpoint was given: pass ckpt_path=FILE (a checkpoint "
            f"written by `segbench train`), or leave '{MODEL}' out of methods to compare the baselines only"
        )
    out = list(dict.fromkeys(names))
    if not out:
        raise SegbenchError(f"methods is empty; choose from {', '.join(valid_methods())}")
    return out


def setup_warnings(
    methods: Sequence[str], *, has_model: bool, split: str, fit_split: str, params_dir: str | None
) -> list[str]:
    """What is odd about a comparison's set-up: a checkpoint that is not scored, baselines fitted on the
    images they are scored on."""
    out = []
    if has_model and MODEL not in methods:
        out.append(f"ckpt_path is set but methods does not include '{MODEL}': the model is not scored")
    if any(m != MODEL for m in methods) and not params_dir and fit_split == split:
        out.append(
            f"fit_split and split are both '{split}': the baselines are fitted on the images they are scored "
            "on, which flatters them; fit on the training split instead"
        )
    return out


def fit_indices(n: int, limit: int | None) -> list[int]:
    """Indices of at most ``limit`` of ``n`` images, evenly spread (all when ``limit`` is None or >= n).

    >>> fit_indices(10, 3)
    [0, 4, 9]
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SegbenchError(f"fit_images={limit!r} is not valid; expected a positive integer or null (all)")
    if limit is None or limit >= n:
        return list(range(n))
    return [int(i) for i in np.unique(np.linspace(0, n - 1, limit).round().astype(int))]


def prepare_baselines(
    names: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    fit_dataset: CocoDataset | None = None,
    fit_images: int | None = 50,
    params_dir: str | os.PathLike | None = None,
) -> dict[str, BaseSegmenter]:
    """Build the baselines ``names``, fitted on ``fit_dataset`` or restored from ``params_dir``.

    Parameters
    ----------
    names : sequence of str
        Baseline names (keys of :data:`segbench.baselines.BASELINES`).
    options : mapping
        ``{name: {constructor option: value}}``; missing names use the defaults.
    fit_dataset : CocoDataset, optional
        The split to fit on — the training split, never the one that is scored. Needed unless
        ``params_dir`` is given.
    fit_images : int or None
        Fit on at most this many images of ``fit_dataset``, evenly spread over it (None: all).
    params_dir : path, optional
        A folder of ``<name>.json`` written by an earlier run (``<out>/baselines``): the baselines are
        loaded from it instead of fitted (their options come from the file).

    Raises
    ------
    SegbenchError
        Invalid options, a missing or foreign params file, nothing to fit on.
    """
    options = options or {}
    built: dict[str, BaseSegmenter] = {}
    for name in names:
        opts = dict(options.get(name) or {})
        try:
            built[name] = build_baseline(name, **opts)
        except (TypeError, ValueError) as e:
            raise SegbenchError(f"baselines.{name}: {e}") from None
    if not built:
        return built

    if params_dir is not None:
        out: dict[str, BaseSegmenter] = {}
        for name, configured in built.items():
            path = Path(params_dir) / f"{name}.json"
            if not path.is_file():
                raise SegbenchError(
                    f"baseline_params_dir={params_dir} has no {path.name} for baseline '{name}'; point it at "
                    "the baselines/ folder of an earlier `segbench compare` run, or drop baseline_params_dir "
                    "to fit the baselines on the training split"
                )
            try:
                seg = load_baseline(path)
            except (TypeError, ValueError) as e:
                raise SegbenchError(f"{path}: {e}") from None
            if seg.name != name:
                raise SegbenchError(f"{path} holds the parameters of baseline '{seg.name}', not '{name}'")
            if not seg.is_fitted:
                log.warning(
                    "%s: baseline '%s' was saved before fitting; its auto options use heuristics", path, name
                )
            mine, theirs = configured.get_params()["config"], seg.get_params()["config"]
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if differ:
                log.warning(
                    "baseline '%s': the options in %s are used; they differ from baselines.%s in %s",
                    name,
                    path,
                    name,
                    ", ".join(f"{k} (file {theirs.get(k)!r}, config {mine.get(k)!r})" for k in differ),
                )
            out[name] = seg
        return out

    if fit_dataset is None or len(fit_dataset) == 0:
        raise SegbenchError(
            "the baselines need training images to be fitted on, and the fit split has none; "
            "pass fit_split=... or baseline_params_dir=DIR (fitted parameters of an earlier run)"
        )
    idx = fit_indices(len(fit_dataset), fit_images)
    images = [fit_dataset.load_image(i) for i in idx]
    targets = [fit_dataset.load_instances(i) for i in idx]
    log.info("fitting %d baseline(s) on %d images of %s", len(built), len(idx), fit_dataset.ann_file)
    for name, seg in built.items():
        try:
            seg.fit(images, targets, scorer=f1_scorer)
        except (TypeError, ValueError) as e:
            raise SegbenchError(f"fitting baseline '{name}' on {fit_dataset.ann_file} failed: {e}") from None
    return built


def prepare_refiner(
    segmenter: Segmenter,
    *,
    fit_dataset: CocoDataset | None,
    fit_images: int | None,
    params_file: str | os.PathLike | None = None,
) -> EdgeRefiner:
    """The model's mask refinement (:class:`~segbench.baselines.refine.EdgeRefiner`), fitted on the model's
    predictions of ``fit_dataset`` (at most ``fit_images`` images) against segm AP, or loaded from
    ``params_file`` (an earlier run's ``baselines/refine.json``)."""
    if params_file:
        try:
            return EdgeRefiner.load(params_file)
        except ValueError as e:
            raise SegbenchError(f"refine_params={params_file}: {e}") from None
    if fit_dataset is None or len(fit_dataset) == 0:
        raise SegbenchError(
            "refine=edges is fitted on the fit split, which has no images; pass fit_split=..."
        )
    idx = fit_indices(len(fit_dataset), fit_images)
    images = [fit_dataset.load_image(i) for i in idx]
    log.info("fitting the mask refinement on the model's predictions of %d images", len(idx))
    return EdgeRefiner().fit(
        images,
        [segmenter(im) for im in images],
        [fit_dataset.load_instances(i) for i in idx],
        scorer=segm_ap_scorer,
        tolerance=0.001,
    )


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    """One method scored on the split.

    Attributes
    ----------
    name, kind : str
        ``kind`` is ``"model"`` or ``"baseline"``.
    metrics : dict
        :meth:`Evaluator.compute` output plus ``ms_per_image``.
    evaluator : Evaluator
        Holds the COCO ground truth, the COCO results and the per-image matches.
    score_threshold : float or None
        The confidence the matching scores used (None: every detection).
    params : dict or None
        A baseline's fitted parameters (``get_params()``).
    """

    name: str
    kind: str
    metrics: dict
    evaluator: Evaluator
    score_threshold: float | None = None
    params: dict | None = None

    def predictions(self, index: int, *, thresholded: bool = True) -> Instances:
        """The predictions of the ``index``-th scored image (RLE masks, best score first).

        With ``thresholded``, only the detections the matching scores counted (``score_threshold``).
        """
        ev = self.evaluator
        image = ev.gt_dataset()["images"][index]
        cat_to_label = {c: lbl for lbl, c in ev.label_to_cat_id.items()}
        rs = [r for r in ev.results if r["image_id"] == image["id"]]
        if thresholded and self.score_threshold is not None:
            rs = [r for r in rs if r["score"] >= self.score_threshold]
        rs.sort(key=lambda r: -r["score"])
        size = (int(image["height"]), int(image["width"]))
        if not rs:
            return Instances.empty(size, with_scores=True)
        boxes = np.asarray([r["bbox"] for r in rs], np.float64)
        boxes[:, 2:] += boxes[:, :2]
        return Instances(
            image_size=size,
            boxes=boxes,
            labels=[cat_to_label.get(r["category_id"], 1) for r in rs],
            scores=[r["score"] for r in rs],
            rles=[r["segmentation"] for r in rs],
        )


def evaluate_method(
    name: str,
    segmenter: Segmenter,
    dataset: CocoDataset,
    *,
    kind: str = "baseline",
    score_threshold: float | None = None,
    max_dets: int | None = None,
    limit: int | None = None,
    progress: bool = False,
    warmup: bool = True,
) -> MethodResult:
    """Run one segmenter over ``dataset`` (the first ``limit`` images) and score it with :mod:`segbench.eval`.

    With ``warmup``, the segmenter first predicts the first image once, untimed, so that ``ms_per_image``
    does not include one-off start-up costs (lazy imports, memory allocation, CUDA kernels).
    """
    log.info("scoring %s on %d images", name, len(dataset) if limit is None else min(limit, len(dataset)))
    if warmup and len(dataset):
        segmenter(dataset.load_image(0))  # lazy initialisation is not prediction time
    metrics, ev = evaluate_segmenter(
        segmenter, dataset, max_dets=max_dets, score_threshold=score_threshold, limit=limit, progress=progress
    )
    params = segmenter.get_params() if hasattr(segmenter, "get_params") else None
    return MethodResult(name, kind, metrics, ev, score_threshold=score_threshold, params=params)


def leaderboard_rows(results: Mapping[str, MethodResult] | Sequence[MethodResult]) -> list[dict]:
    """One row per method (keys of :data:`segbench.report.tables.LEADERBOARD_COLUMNS` plus ``method``, ``kind``,
    ``per_class_AP``, ``precision``, ``recall``, ``num_pred``, ``score_threshold``), best class-agnostic
    segm AP first (methods without an AP last)."""
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    rows = []
    for r in items:
        m = r.metrics
        row: dict[str, Any] = {"method": r.name, "kind": r.kind}
        for k in _AGNOSTIC_KEYS:
            row[k] = m.get(f"segm_agnostic_{k}", m.get(f"segm_{k}"))
        row["boundary_AP"] = m.get("boundary_agnostic_AP", m.get("boundary_AP"))
        row["AP_by_iou"] = dict(m.get("segm_agnostic_AP_by_iou", m.get("segm_AP_by_iou")) or {})
        model = r.kind == "model"
        row["AP_class_aware"] = m.get("segm_AP") if model else None
        row["per_class_AP"] = dict(m.get("per_class_segm_AP") or {}) if model else {}
        for k in ("f1", "pq", "fg_iou", "fg_dice", "precision", "recall", "ms_per_image", "num_pred"):
            row[k] = m.get(k)
        row["score_threshold"] = r.score_threshold
        rows.append(row)
    rows.sort(key=lambda row: -1.0 if row["AP"] is None else row["AP"], reverse=True)
    return rows


def score_warnings(results: Mapping[str, MethodResult]) -> list[str]:
    """Warnings about methods whose scores cannot rank their detections.

    All scores equal: COCO AP then ranks the detections arbitrarily (in file order), so the method's AP
    says little; no detection at all: every score of the method is 0.
    """
    out = []
    for r in results.values():
        scores = np.asarray([d["score"] for d in r.evaluator.results], dtype=np.float64)
        if scores.size == 0:
            out.append(f"{r.name} made no detection on the {len(r.evaluator)} images: all its scores are 0")
        elif scores.size > 1 and float(scores.max()) == float(scores.min()):
            out.append(
                f"{r.name}: all {scores.size} instance scores are equal ({scores[0]:.4g}); COCO AP then ranks "
                "its detections arbitrarily, so its AP, AP50 and PR curve are not meaningful — compare it by "
                "F1, PQ and foreground IoU"
            )
    return out


def method_pr_curves(
    results: Mapping[str, MethodResult],
    *,
    iou_thresholds: Sequence[float] = (0.5, 0.75),
    max_dets: int | None = None,
) -> dict[str, dict[float, tuple[np.ndarray, np.ndarray]]]:
    """Class-agnostic segm precision-recall curves of each method (``{name: {iou: (recall, precision)}}``)."""
    return {
        name: pr_curve(
            r.evaluator.gt_dataset(),
            r.evaluator.results,
            iou_type="segm",
            iou_thresholds=iou_thresholds,
            class_agnostic=True,
            max_dets=max_dets,
        )
        for name, r in results.items()
    }


def _rank_labels(n: int) -> list[str]:
    if n == 1:
        return ["best"]
    if n == 2:
        return ["best", "worst"]
    if n == 3:
        return ["best", "median", "worst"]
    return ["best", *[f"rank {k + 2}" for k in range(n - 2)], "worst"]


def pick_images(result: MethodResult, n: int = 3) -> list[dict]:
    """The best, median and worst images of a method (``n`` images, evenly spread over the ranking).

    Images are ranked by their F1 at IoU 0.5 (ties by PQ, then by position), from
    :attr:`Evaluator.image_matches`.

    Returns
    -------
    list of dict
        ``label`` ("best", "median", "worst" or "rank k"), ``index`` (position in the evaluator),
        ``image_id``, ``file_name``, ``f1``, ``pq``, ``rank`` (1 = best), ``of`` (images ranked).
    """
    matches = result.evaluator.image_matches
    images = result.evaluator.gt_dataset()["images"]
    if n <= 0 or not matches:
        return []
    order = sorted(range(len(matches)), key=lambda i: (-matches[i].f1, -matches[i].pq, i))
    n = min(n, len(order))
    positions = [int(p) for p in np.linspace(0, len(order) - 1, n).round()] if n > 1 else [0]
    if n == 3:  # the median of the ranking, exactly
        positions[1] = (len(order) - 1) // 2
    out = []
    for label, pos in zip(_rank_labels(n), positions, strict=True):
        i = order[pos]
        out.append(
            {
                "label": label,
                "index": i,
                "image_id": images[i]["id"],
                "file_name": images[i].get("file_name", ""),
                "f1": matches[i].f1,
                "pq": matches[i].pq,
                "rank": pos + 1,
                "of": len(order),
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# Bootstrap over images
# --------------------------------------------------------------------------------------------------
def resample_coco(
    gt: dict, results: Sequence[Sequence[dict]], indices: Sequence[int]
) -> tuple[dict, list[list[dict]]]:
    """A bootstrap sample of a COCO ground truth and of result lists, drawn image by image.

    The ``k``-th drawn image (``gt["images"][indices[k]]``, repeats allowed) becomes image id ``k + 1``;
    its annotations and results follow it, annotations renumbered.
    """
    anns_by: dict[Any, list[dict]] = {}
    for a in gt["annotations"]:
        anns_by.setdefault(a["image_id"], []).append(a)
    res_by: list[dict[Any, list[dict]]] = []
    for rs in results:
        d: dict[Any, list[dict]] = {}
        for r in rs:
            d.setdefault(r["image_id"], []).append(r)
        res_by.append(d)
    images, anns = [], []
    new_results: list[list[dict]] = [[] for _ in results]
    for k, i in enumerate(indices):
        im = gt["images"][int(i)]
        new_id = k + 1
        images.append({**im, "id": new_id})
        for a in anns_by.get(im["id"], []):
            anns.append({**a, "id": len(anns) + 1, "image_id": new_id})
        for d, out in zip(res_by, new_results, strict=True):
            out.extend({**r, "image_id": new_id} for r in d.get(im["id"], []))
    return {"images": images, "annotations": anns, "categories": gt["categories"]}, new_results


#: z_(1 - 0.05/2) + z_0.80: the smallest detectable difference is this many bootstrap standard errors
#: (a two-sided test at the 5 % level with 80 % power, normal approximation).
MDE_Z = 1.959964 + 0.841621


def _interval(values: list[float], point: float | None, confidence: float) -> dict:
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(v, [50 * (1 - confidence), 50 * (1 + confidence)]) if v.size else (None, None)
    return {
        "min_detectable_difference": float(MDE_Z * v.std(ddof=1)) if v.size > 1 else None,
        "difference": point,
        "ci_low": None if lo is None else float(lo),
        "ci_high": None if hi is None else float(hi),
        "bootstrap_mean": float(v.mean()) if v.size else None,
        "p_not_better": float(np.mean(v <= 0)) if v.size else None,
        "resamples_used": int(v.size),
    }


def bootstrap_difference(
    a: MethodResult,
    b: MethodResult,
    *,
    n_resamples: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    max_dets: int | None = None,
    per_class: bool = False,
) -> dict:
    """Paired bootstrap over images of ``a`` minus ``b``: class-agnostic segm AP and F1 at IoU 0.5 (and,
    with ``per_class``, each class's segm AP).

    Each resample draws the images with replacement (the same draw for both methods), scores both with
    :class:`~segbench.eval.metrics.ResampledAP` (COCO AP, the numbers of :func:`~segbench.eval.metrics.coco_evaluate` on a copy of
    the resample, without matching again) and :func:`summarize_matches` (F1), and records the difference; the
    interval is the percentile interval of those differences. Resamples without any ground-truth object
    (no AP) are left out of the AP interval.

    Returns
    -------
    dict
        ``a``, ``b``, ``n_images``, ``n_resamples``, ``seed``, ``confidence`` and, for ``segm_agnostic_AP``
        and ``f1``: ``a``, ``b`` (full-split values), ``difference``, ``ci_low``, ``ci_high``,
        ``bootstrap_mean``, ``p_not_better`` (share of resamples where ``a`` is not better),
        ``resamples_used``, ``min_detectable_difference`` (:data:`MDE_Z` bootstrap standard errors: a
        smaller true difference is likely to go unseen on these images); with ``per_class``,
        ``per_class_AP`` holds the same for each class.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise SegbenchError(
            f"bootstrap={n_resamples!r} is not valid; expected a positive number of resamples"
        )
    gt = a.evaluator.gt_dataset()
    ids_a = [im["id"] for im in gt["images"]]
    ids_b = [im["id"] for im in b.evaluator.gt_dataset()["images"]]
    if ids_a != ids_b:
        raise ValueError(f"{a.name} and {b.name} were scored on different images; cannot pair them")
    n = len(ids_a)
    ma, mb = a.evaluator.image_matches, b.evaluator.image_matches
    rng = np.random.default_rng(seed)
    ap_diffs: list[float] = []
    f1_diffs: list[float] = []
    class_diffs: dict[str, list[float]] = {}
    # each method matched once; a resample only re-accumulates (the numbers of rescoring a copy of it)
    agn = [ResampledAP(gt, m.evaluator.results, max_dets=max_dets, class_agnostic=True) for m in (a, b)]
    cls = [ResampledAP(gt, m.evaluator.results, max_dets=max_dets) for m in (a, b)] if per_class else None
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        ap_a, ap_b = agn[0](idx), agn[1](idx)
        if ap_a["AP"] is not None and ap_b["AP"] is not None:
            ap_diffs.append(ap_a["AP"] - ap_b["AP"])
        f1_a = summarize_matches([ma[i] for i in idx])["f1"]
        f1_b = summarize_matches([mb[i] for i in idx])["f1"]
        f1_diffs.append(f1_a - f1_b)
        if cls is not None:
            pa, pb = cls[0](idx)["per_class_AP"], cls[1](idx)["per_class_AP"]
            for c in pa:
                if pa[c] is not None and pb.get(c) is not None:
                    class_diffs.setdefault(c, []).append(pa[c] - pb[c])

    out: dict[str, Any] = {
        "a": a.name,
        "b": b.name,
        "n_images": n,
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
    }
    for name, diffs in (("segm_agnostic_AP", ap_diffs), ("f1", f1_diffs)):
        va, vb = a.metrics.get(name), b.metrics.get(name)
        point = None if va is None or vb is None else va - vb
        out[name] = {"a": va, "b": vb, **_interval(diffs, point, confidence)}
    if per_class:
        ca, cb = a.metrics.get("per_class_segm_AP") or {}, b.metrics.get("per_class_segm_AP") or {}
        out["per_class_AP"] = {}
        for c in ca:
            point = None if ca.get(c) is None or cb.get(c) is None else ca[c] - cb[c]
            out["per_class_AP"][c] = {
                "a": ca.get(c),
                "b": cb.get(c),
                **_interval(class_diffs.get(c, []), point, confidence),
            }
    return out


def results_method(
    name: str,
    gt: CocoDataset,
    results: Sequence[dict],
    *,
    max_dets: int | None = None,
    score_threshold: float | None = None,
) -> MethodResult:
    """A results list (e.g. a results file of any tool) scored on ``gt`` as one :class:`MethodResult`."""
    preds = results_to_instances(results, gt)
    ev = Evaluator(
        gt.categories, label_to_cat_id=gt.label_to_cat_id, max_dets=max_dets, score_threshold=score_threshold
    )
    for i, im in enumerate(gt.images):
        ev.update(gt.load_instances(i), preds[im["id"]], image_id=im["id"], file_name=im.get("file_name", ""))
    return MethodResult(name, "results", ev.compute(), ev, score_threshold=score_threshold)


# --------------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------------
@dataclass
class MethodSpec:
    """A method to score: its segmenter, its kind and the confidence its matching scores use."""

    name: str
    segmenter: Segmenter
    kind: str = "baseline"
    score_threshold: float | None = None


@dataclass
class Comparison:
    """The outcome of :func:`compare_methods` (everything the report shows)."""

    dataset: str
    split: str
    num_images: int
    results: dict[str, MethodResult]
    leaderboard: list[dict]
    warnings: list[str]
    pr_curves: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]]
    ranking_method: str | None
    chosen_images: list[dict]
    bootstrap: dict | None
    notes: list[str] = field(default_factory=list)
    #: The model's error analysis (:func:`segbench.eval.analysis.analyse`): confusion, errors, calibrated.
    analysis: dict | None = None
    #: Per method, one row per image (:func:`segbench.eval.analysis.per_image_table`).
    per_image: dict[str, list[dict]] = field(default_factory=dict)
    #: Suspected label errors (:func:`segbench.eval.analysis.find_label_errors`), when asked for.
    label_errors: dict | None = None

    @property
    def best_baseline(self) -> str | None:
        return next((r["method"] for r in self.leaderboard if r["kind"] == "baseline"), None)


def compare_methods(
    methods: Sequence[MethodSpec],
    dataset: CocoDataset,
    *,
    split: str = "val",
    max_dets: int | None = None,
    limit: int | None = None,
    bootstrap: int = 200,
    bootstrap_seed: int = 0,
    overlays: int = 3,
    progress: bool = False,
    label_errors: bool = False,
) -> Comparison:
    """Score every method on ``dataset`` and gather the leaderboard, warnings, PR curves, the images to
    show, and the bootstrap interval of the model against the best baseline.

    The images to show are ranked by the model's per-image F1 (by the best baseline's without a model).
    The bootstrap is skipped (with a note) when there is no model, no baseline or ``bootstrap=0``.
    The model's errors are analysed (confusion, error categories, calibrated thresholds), and with
    ``label_errors`` the labels that the model and the baselines contradict are listed.
    """
    if not methods:
        raise SegbenchError("nothing to compare: no method given")
    results = {
        s.name: evaluate_method(
            s.name,
            s.segmenter,
            dataset,
            kind=s.kind,
            score_threshold=s.score_threshold,
            max_dets=max_dets,
            limit=limit,
            progress=progress,
        )
        for s in methods
    }
    rows = leaderboard_rows(results)
    warnings = score_warnings(results)
    curves = method_pr_curves(results, max_dets=max_dets)
    model = next((r for r in results.values() if r.kind == "model"), None)
    best_baseline = next((r["method"] for r in rows if r["kind"] == "baseline"), None)
    ranking = model.name if model is not None else best_baseline
    chosen = pick_images(results[ranking], overlays) if ranking else []
    notes = []
    boot = None
    if model is None:
        notes.append(
            "bootstrap skipped: there is no model to compare with the baselines (pass ckpt_path=FILE)"
        )
    elif best_baseline is None:
        notes.append("bootstrap skipped: there is no baseline to compare the model with")
    elif not bootstrap:
        notes.append("bootstrap skipped: bootstrap=0")
    else:
        log.info("bootstrap: %d resamples of %s vs %s", bootstrap, model.name, best_baseline)
        boot = bootstrap_difference(
            model,
            results[best_baseline],
            n_resamples=int(bootstrap),
            seed=int(bootstrap_seed),
            max_dets=max_dets,
        )
    per_image = {
        name: per_image_table(r.evaluator.gt_dataset()["images"], r.evaluator.image_matches)
        for name, r in results.items()
    }
    analysis = found = None
    if model is not None:
        gt = model.evaluator.gt_dataset()
        analysis = analyse(gt, model.evaluator.results, score_threshold=model.score_threshold)
        if label_errors:
            others = [r.evaluator.results for r in results.values() if r.kind != "model"]
            found = find_label_errors(
                gt, model.evaluator.results, other_results=others, thresholds=analysis["calibrated"]
            )
    elif label_errors:
        notes.append("label errors skipped: they need a model's confident detections (pass ckpt_path=FILE)")
    return Comparison(
        dataset=str(dataset.ann_file),
        split=split,
        num_images=len(next(iter(results.values())).evaluator),
        results=results,
        leaderboard=rows,
        warnings=warnings,
        pr_curves=curves,
        ranking_method=ranking,
        chosen_images=chosen,
        bootstrap=boot,
        notes=notes,
        analysis=analysis,
        per_image=per_image,
        label_errors=found,
    )
