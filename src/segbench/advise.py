"""How many labels you need: train on nested subsets of the train split, score each on the val split,
fit a learning curve and predict the val segm mAP at twice the labels.

Plain functions of ready objects (no config): the ``advise`` command builds ``train_one`` — one run of
the training recipe on given train images, in a given folder — and calls :func:`advise`.

* :func:`nested_subsets` draws the subsets from one permutation of the train split (fixed seed), so the
  25 % subset lies inside the 50 % one, inside 100 %.
* Each run is scored on the whole val split by :func:`segbench.training.evaluate_checkpoint`, the final
  evaluation of ``segbench train``, which also writes its COCO results.
* :func:`bootstrap_scores` resamples the val images (the same draw for every run) and rescores each
  run's results (:class:`~segbench.eval.metrics.ResampledAP`: COCO AP without matching again); the curve maths (fit, refit per
  resample, intervals, hold-out check) is :mod:`segbench.eval.learning_curve`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segbench.data.coco import CocoDataset
from segbench.eval.learning_curve import analyse_learning_curve
from segbench.eval.metrics import Evaluator, ResampledAP, coco_evaluate
from segbench.io import read_json, write_json
from segbench.training import evaluate_checkpoint
from segbench.types import Instances, SegbenchError

log = logging.getLogger(__name__)

#: ``train_one(train_indices, run_dir) -> result``: one training run on the train images at
#: ``train_indices`` (positions in the train split), written to ``run_dir``; ``result`` is
#: :func:`segbench.training.fit`'s dict (``global_step``, ``epochs``, ``train_wall_seconds``,
#: ``best_checkpoint`` / ``last_checkpoint``...) plus ``final_checkpoint``, the weights at the end of the
#: run. It does not need to evaluate: :func:`advise` scores it.
TrainOne = Callable[[list[int], Path], Mapping[str, Any]]
UNITS = ("images", "objects")
CHECKPOINTS = ("final", "best")
#: A largest run that went over its train images fewer times than this was still limited by its training
#: time: its curve tells what labels do at this budget, not what they would do with a longer one.
FEW_PASSES = 3.0


def check_fractions(fractions: Sequence[float] | float, *, minimum: int = 2) -> list[float]:
    """The fractions as sorted floats in (0, 1], at least ``minimum``, no repeats; SegbenchError otherwise.

    >>> check_fractions([1.0, 0.25, 0.5])
    [0.25, 0.5, 1.0]
    """
    if isinstance(fractions, (int, float)) and not isinstance(fractions, bool):
        fractions = [fractions]
    try:
        if any(isinstance(f, bool) for f in fractions):
            raise TypeError
        values = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise SegbenchError(
            f"fractions={fractions!r} is not valid; expected a list of shares of the train split, "
            "e.g. fractions=[0.25,0.5,1.0]"
        ) from None
    bad = [f for f in values if not 0 < f <= 1]
    if bad:
        raise SegbenchError(f"fractions {bad} are not in (0, 1]; e.g. fractions=[0.25,0.5,1.0]")
    if len(set(values)) != len(values):
        raise SegbenchError(f"fractions={values} repeats a value; give each share once")
    if len(values) < minimum:
        raise SegbenchError(
            f"fractions={values}: a learning curve needs at least 2 fractions (3 or more for the power "
            "law and the hold-out check), e.g. fractions=[0.25,0.5,1.0]"
        )
    return sorted(values)


def subset_size(n_images: int, fraction: float) -> int:
    """Images in a ``fraction`` of ``n_images`` (rounded half up, at least 1).

    >>> subset_size(400, 0.25), subset_size(10, 0.05), subset_size(7, 1.0)
    (100, 1, 7)
    """
    return max(1, min(n_images, int(np.floor(fraction * n_images + 0.5))))


def nested_subsets(n_images: int, fractions: Sequence[float], *, seed: int = 0) -> list[list[int]]:
    """Nested random subsets of ``range(n_images)``: the first ``subset_size(n, f)`` images of one seeded
    permutation, for each fraction (sorted ascending); each subset is returned sorted.

    Raises
    ------
    SegbenchError
        Invalid fractions (:func:`check_fractions`), or two fractions giving the same number of images.

    >>> small, large = nested_subsets(8, [0.5, 0.25], seed=1)
    >>> len(small), len(large), set(small) <= set(large)
    (2, 4, True)
    """
    fractions = check_fractions(fractions, minimum=1)
    if n_images < 1:
        raise SegbenchError("the train split has no images to draw subsets from")
    order = np.random.default_rng(int(seed)).permutation(n_images)
    sizes = [subset_size(n_images, f) for f in fractions]
    if len(set(sizes)) != len(sizes):
        raise SegbenchError(
            f"fractions {fractions} of {n_images} train images give subsets of {sizes} images: two are the "
            "same size; choose fractions further apart"
        )
    return [sorted(int(i) for i in order[:k]) for k in sizes]


def count_objects(dataset: CocoDataset, indices: Sequence[int]) -> int:
    """Labelled objects (non-crowd annotations kept by the dataset) in the images at ``indices``."""
    return sum(1 for i in indices for a in dataset.annotations(int(i)) if not a.get("iscrowd", 0))


def val_ground_truth(dataset: CocoDataset) -> dict:
    """The COCO ground truth of ``dataset`` exactly as the evaluator of
    :func:`~segbench.eval.runner.evaluate_segmenter` builds it (same image ids, categories and RLE
    annotations), without reading a single image."""
    ev = Evaluator(dataset.categories, label_to_cat_id=dataset.label_to_cat_id, iou_types=("segm",))
    for i, im in enumerate(dataset.images):
        gt = dataset.load_instances(i)
        ev.update(gt, Instances.empty(gt.image_size, with_scores=True), image_id=im["id"], file_name="")
    return ev.gt_dataset()


def segm_map(gt: dict, results: Sequence[dict], *, max_dets: int | None = None) -> float | None:
    """Class-aware segm mAP (COCO AP at IoU 0.50:0.95): ``segm_AP`` of the evaluation, ``val/segm_mAP``
    of training."""
    return coco_evaluate(gt, list(results), iou_type="segm", max_dets=max_dets)["AP"]


def bootstrap_scores(
    gt: dict,
    results: Sequence[Sequence[dict]],
    *,
    n_resamples: int = 200,
    seed: int = 0,
    max_dets: int | None = None,
) -> np.ndarray:
    """Paired bootstrap of the segm mAP of several result lists on the same ground truth.

    Each resample draws the images of ``gt`` with replacement, the same draw for every result list, and
    scores every list on it (:class:`~segbench.eval.metrics.ResampledAP`: the numbers of scoring a copy of
    the resample, :func:`~segbench.eval.compare.resample_coco`, without matching the images again).

    Returns
    -------
    ndarray, float64, shape (n_resamples, len(results))
        NaN where a resample has no ground-truth object (no AP).
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise SegbenchError(
            f"bootstrap={n_resamples!r} is not valid; expected a positive number of resamples"
        )
    n = len(gt["images"])
    rng = np.random.default_rng(int(seed))
    out = np.full((n_resamples, len(results)), np.nan)
    t0 = time.perf_counter()
    scorers = [
        ResampledAP(gt, list(rs), iou_type="segm", max_dets=max_dets) for rs in results
    ]  # matched once
    for r in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        for k, score in enumerate(scorers):
            ap = score(idx)["AP"]
            out[r, k] = np.nan if ap is None else ap
        if r == 0 or (r + 1) % 50 == 0:
            log.info("bootstrap: %d / %d resamples (%.0f s)", r + 1, n_resamples, time.perf_counter() - t0)
    return out


def pick_checkpoint(result: Mapping[str, Any], checkpoint: str = "final") -> str | None:
    """The checkpoint of a run to score: ``final`` -> ``final_checkpoint``; ``best`` -> the best, else the
    last, else the final one (None when the run left none).

    >>> pick_checkpoint({"best_checkpoint": None, "last_checkpoint": "l", "final_checkpoint": "f"}, "best")
    'l'
    """
    order = ("final",) if checkpoint == "final" else ("best", "last", "final")
    return next((str(result[f"{k}_checkpoint"]) for k in order if result.get(f"{k}_checkpoint")), None)


def run_name(fraction: float) -> str:
    """The folder of a fraction's run.

    >>> run_name(0.25), run_name(1.0)
    ('frac_0.25', 'frac_1')
    """
    return f"frac_{fraction:g}"


def advise(
    train_one: TrainOne,
    train_dataset: CocoDataset,
    val_dataset: CocoDataset,
    *,
    fractions: Sequence[float],
    out: str | os.PathLike,
    runs_dir: str | os.PathLike | None = None,
    seed: int = 0,
    unit: str = "images",
    n_resamples: int = 200,
    confidence: float = 0.95,
    factor: float = 2.0,
    checkpoint: str = "final",
    eval_max_dets: int | None = None,
    eval_score_threshold: float | None = 0.5,
    progress: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Train on nested subsets, score each run on the whole val split, fit the learning curve.

    Parameters
    ----------
    train_one : callable
        ``train_one(train_indices, run_dir) -> result`` (:data:`TrainOne`), the same recipe every time.
    train_dataset, val_dataset : CocoDataset
        The train split the subsets are drawn from; the split every run is scored on (all its images).
    fractions : sequence of float
        Shares of the train split, in (0, 1]; at least 2 (3 for the power law and the hold-out check).
    out : path
        Where ``advise.json`` is written (after every run, so that a long session shows its progress).
    runs_dir : path, optional
        The parent of the run folders (``<runs_dir>/frac_<fraction>``); default ``<out>/runs``.
    seed : int
        Draws the subsets and the bootstrap resamples.
    unit : {"images", "objects"}
        The learning curve's ``n``: labelled images or labelled objects of each subset.
    n_resamples : int
        Bootstrap resamples of the val images (0: no intervals).
    confidence : float
        Of the percentile intervals.
    factor : float
        Predict the mAP at ``factor`` times the labels of the largest run.
    checkpoint : {"final", "best"}
        The weights scored: ``final``, the weights at the end of the budget (``result["final_checkpoint"]``):
        every run is scored at the same point of its schedule, and nothing is chosen on the split it is
        scored on; ``best``, the best checkpoint by val segm mAP during training, as the final evaluation
        of ``segbench train`` (else the last one, else the final weights).
    eval_max_dets, eval_score_threshold
        The evaluation's detection cap and the score threshold of F1 / PQ (as in training's final one).
    extra : mapping, optional
        Added to ``advise.json`` as it is (e.g. the budget and the recipe's name).

    Returns
    -------
    dict
        The content of ``advise.json``: ``runs`` (each ``fraction``, ``images``, ``objects``, ``steps``,
        ``epochs``, ``wall_seconds`` (training), ``eval_seconds``, ``segm_mAP`` with ``segm_mAP_ci``,
        ``bbox_mAP``, ``run_dir``, ``checkpoint``), ``fit`` (model, parameters, formula, note, rmse),
        ``prediction`` (``n``, ``factor``, ``mAP``, ``ci_low``, ``ci_high``, ``gain``), ``points``,
        ``curve``, ``bootstrap``, ``holdout_check`` and the set-up (``unit``, ``seed``, splits, counts).
    """
    if checkpoint not in CHECKPOINTS:
        raise SegbenchError(f"checkpoint={checkpoint!r} is not valid; choose one of {', '.join(CHECKPOINTS)}")
    if unit not in UNITS:
        raise SegbenchError(f"unit={unit!r} is not valid; choose one of {', '.join(UNITS)}")
    fractions = check_fractions(fractions)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 0:
        raise SegbenchError(f"bootstrap={n_resamples!r} is not valid; expected 0 (no intervals) or more")
    if not 0 < confidence < 1:
        raise SegbenchError(f"confidence={confidence!r} is not valid; expected a number in (0, 1), e.g. 0.95")
    out = Path(out)
    runs_dir = Path(runs_dir) if runs_dir is not None else out / "runs"
    n_train = len(train_dataset)
    subsets = nested_subsets(n_train, fractions, seed=seed)
    gt = val_ground_truth(val_dataset)
    n_val_objects = sum(1 for a in gt["annotations"] if not a.get("iscrowd", 0))
    if n_val_objects == 0:
        raise SegbenchError(
            f"{val_dataset.ann_file} has no labelled object: the val split cannot score the runs"
        )
    doc: dict[str, Any] = {
        "train": str(train_dataset.ann_file),
        "val": str(val_dataset.ann_file),
        "train_images": n_train,
        "train_objects": count_objects(train_dataset, range(n_train)),
        "val_images": len(gt["images"]),
        "val_objects": n_val_objects,
        "fractions": fractions,
        "seed": int(seed),
        "unit": unit,
        "checkpoint": checkpoint,
        **dict(extra or {}),
        "runs": [],
    }
    results: list[list[dict]] = []
    for fraction, indices in zip(fractions, subsets, strict=True):
        run_dir = runs_dir / run_name(fraction)
        n_obj = count_objects(train_dataset, indices)
        log.info(
            "advise: training on %.0f%% of the train split (%d images, %d objects) in %s",
            100 * fraction,
            len(indices),
            n_obj,
            run_dir,
        )
        write_json(run_dir / "train_indices.json", indices)
        t0 = time.perf_counter()
        result = dict(train_one(list(indices), run_dir))
        wall = result.get("train_wall_seconds", time.perf_counter() - t0)
        ckpt = pick_checkpoint(result, checkpoint)
        if not ckpt:
            raise SegbenchError(
                f"the run on {fraction:g} of the train split left no {checkpoint} checkpoint in {run_dir}; "
                "advise scores checkpoints (drop debug=fdr / trainer.fast_dev_run)"
            )
        t1 = time.perf_counter()
        metrics = evaluate_checkpoint(
            ckpt,
            val_dataset,
            out_dir=run_dir / "eval",
            max_dets=eval_max_dets,
            score_threshold=eval_score_threshold,
            progress=progress,
        )
        eval_seconds = time.perf_counter() - t1
        rs = read_json(run_dir / "eval" / "results.json", what="results file")
        recomputed = segm_map(gt, rs, max_dets=eval_max_dets)
        if metrics.get("segm_AP") is not None and abs((recomputed or 0.0) - metrics["segm_AP"]) > 1e-9:
            log.warning(  # the bootstrap would then not describe the reported number
                "segm mAP recomputed from %s is %s, the evaluation says %s",
                run_dir / "eval" / "results.json",
                recomputed,
                metrics["segm_AP"],
            )
        results.append(rs)
        doc["runs"].append(
            {
                "fraction": fraction,
                "images": len(indices),
                "objects": n_obj,
                "steps": result.get("global_step"),
                "epochs": result.get("epochs"),
                "passes": (
                    None
                    if result.get("images_seen") is None
                    else float(result["images_seen"]) / max(len(indices), 1)
                ),
                "wall_seconds": float(wall),
                "eval_seconds": eval_seconds,
                "segm_mAP": metrics.get("segm_AP"),
                "segm_mAP_ci": None,
                "bbox_mAP": metrics.get("bbox_AP"),
                "run_dir": str(run_dir),
                "checkpoint": str(ckpt),
            }
        )
        log.info(
            "advise: %.0f%% -> val segm mAP %s after %s steps (%.0f s)",
            100 * fraction,
            metrics.get("segm_AP"),
            result.get("global_step"),
            wall,
        )
        write_json(out / "advise.json", {**doc, "status": "running"})

    runs = doc["runs"]
    x = np.asarray([r[unit] for r in runs], np.float64)
    y = np.asarray([0.0 if r["segm_mAP"] is None else r["segm_mAP"] for r in runs], np.float64)
    if np.unique(x).size < len(x):
        raise SegbenchError(
            f"two subsets have the same number of {unit} ({x.astype(int).tolist()}); use unit=images or "
            "fractions further apart"
        )
    y_boot = None
    if n_resamples:
        log.info("advise: bootstrap of the val images, %d resamples x %d runs", n_resamples, len(runs))
        y_boot = bootstrap_scores(gt, results, n_resamples=n_resamples, seed=seed, max_dets=eval_max_dets)
    analysis = analyse_learning_curve(x, y, y_boot, factor=factor, confidence=confidence)
    for r, p in zip(runs, analysis["points"], strict=True):
        m = p["measured"]
        r["segm_mAP_ci"] = None if m["ci_low"] is None else [m["ci_low"], m["ci_high"]]
    doc.update(analysis)
    doc["verdict"] = verdict(doc)
    doc["status"] = "done"
    write_json(out / "advise.json", doc)
    return doc


def verdict(doc: Mapping[str, Any]) -> dict:
    """The answer to "will more labels help?" from an advice's curve, hold-out check and runs: ``answer``
    and ``text``.

    ``unreliable`` when the hold-out check failed (the curve fitted without the largest run does not predict
    it: these runs do not follow one curve, and no extrapolation is to be trusted); else, from the interval
    of the curve's own gain (the refitted curve at ``factor`` x the labels minus the same curve at today's
    labels, over the bootstrap resamples of the val images): ``more_labels_help`` when it is above zero,
    ``no_gain`` when below, ``not_detectable`` when it holds zero; ``unknown`` without intervals
    (``bootstrap=0``). A largest run that went over its images fewer than :data:`FEW_PASSES` times adds that
    training time, not labels, may be the limit. The intervals are over the val images only: a run's seed
    adds noise they cannot see.

    >>> verdict({"prediction": {"factor": 2.0, "curve_gain": 0.05, "curve_gain_ci": [0.01, 0.09]},
    ...          "runs": [{"passes": 12.0}, {"passes": 8.0}], "holdout_check": {"within_interval": True}})["answer"]
    'more_labels_help'
    """
    p = doc["prediction"]
    runs = list(doc.get("runs") or [])
    factor = float(p["factor"])
    gain = p.get("curve_gain")
    ci = p.get("curve_gain_ci")
    head = f"{factor:g}x the labels: {gain:+.3f} val segm mAP by the curve" if gain is not None else ""
    hc = doc.get("holdout_check") or {}
    if hc.get("within_interval") is False:
        answer = "unreliable"
        text = (
            f"not to be extrapolated: fitted without the largest run, the curve predicts "
            f"{hc['predicted']['mAP']:.3f} for it, measured {hc['measured']['mAP']:.3f} (outside its "
            "interval): these runs do not follow one learning curve"
        )
    elif ci is None:
        answer, text = "unknown", f"{head} (no interval: bootstrap=0)"
    elif ci[0] > 0:
        answer = "more_labels_help"
        text = f"label more: {head}, interval {ci[0]:+.3f} to {ci[1]:+.3f} (above zero)"
    elif ci[1] < 0:
        answer = "no_gain"
        text = f"more labels are not expected to help: {head}, interval {ci[0]:+.3f} to {ci[1]:+.3f} (below zero)"
    else:
        answer = "not_detectable"
        text = f"{head}, interval {ci[0]:+.3f} to {ci[1]:+.3f}: a gain this val set cannot tell from none"
    passes = runs[-1].get("passes") if runs else None
    if passes is not None and passes < FEW_PASSES:
        budget = doc.get("budget_minutes")
        within = f" in its {budget:g} minutes" if isinstance(budget, int | float) else ""
        text += (
            f"; the largest run went over its images {passes:.1f} times{within}: training time, not labels, may "
            "be what limits it (a longer budget= tells)"
        )
    return {
        "answer": answer,
        "text": text,
        "curve_gain": gain,
        "curve_gain_ci": ci,
        "largest_run_passes": passes,
    }
