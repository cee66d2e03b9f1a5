"""``segbench advise data.root=DIR [budget=MINUTES] [fractions=[0.25,0.5,1.0]] [experiment=NAME]``."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segbench.commands.train import (
    RECIPE_FILE,
    _apply,
    _auto,
    _rebase,
    build_run,
    choose_auto_recipe,
    recipe_text,
)
from segbench.options import check_bool, check_float
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

#: The keys of configs/advise.yaml that are not keys of a training recipe (never written into recipe.yaml).
_ADVISE_KEYS = ("fractions", "unit", "checkpoint", "factor", "scale_epochs", "bootstrap", "confidence", "out")


def _scaled_epochs(trainer: DictConfig, fraction: float) -> dict:
    """``max_epochs`` and ``check_val_every_n_epoch`` of a run on ``fraction`` of the train split, counted in
    passes over the whole split (unset or non-positive values are kept; nothing changes when
    ``limit_train_batches`` fixes the batches of an epoch; ``check_val_every_n_epoch`` is kept when
    ``val_check_interval`` is a clock interval, ``"DD:HH:MM:SS"`` or a dict)."""
    out: dict = {}
    batches = trainer.get("limit_train_batches")
    if isinstance(batches, int) and not isinstance(batches, bool):
        return out  # epochs of a fixed number of batches: as long on every subset, nothing to scale
    keys = ["max_epochs", "check_val_every_n_epoch"]
    if isinstance(trainer.get("val_check_interval"), str | Mapping):
        # validation by the clock (the auto recipe): already the same in every run, whatever an epoch's
        # length; scaled, a small subset's run would validate only every few epochs and train longer
        keys.remove("check_val_every_n_epoch")
    for key in keys:
        v = trainer.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            out[key] = max(1, math.ceil(v / fraction)) if key == "max_epochs" else max(1, round(v / fraction))
    return out


def _make_train_one(cfg: DictConfig, *, n_train: int, budget_s: float, scale_epochs: bool):
    """``train_one(train_indices, run_dir)``: the recipe of ``cfg`` as ``segbench train`` runs it, on the
    given train images, in ``run_dir``, for ``budget_s`` seconds of training."""
    from segbench.training import fit

    template = str(cfg.run_dir)

    def train_one(indices: list[int], run_dir: Path) -> dict:
        started = time.perf_counter()
        rc = copy.deepcopy(cfg)
        _rebase(rc, template, str(run_dir))  # callbacks' dirpath, loggers' save_dir
        rc.trainer.max_time = {"seconds": budget_s}
        if scale_epochs:
            for key, value in _scaled_epochs(rc.trainer, len(indices) / n_train).items():
                rc.trainer[key] = value
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(rc))
        if rc.get("seed") is not None:
            import pytorch_lightning as pl

            pl.seed_everything(int(rc.seed), workers=True, verbose=False)
        dm, module, trainer = build_run(rc, run_dir, train_indices=list(indices))
        if trainer.world_size > 1:
            raise SegbenchError(
                f"advise trains one process at a time, but trainer.devices={rc.trainer.get('devices')} "
                f"starts {trainer.world_size}; use trainer.devices=1"
            )
        result = fit(
            datamodule=dm,
            module=module,
            trainer=trainer,
            run_dir=run_dir,
            evaluate_best=False,  # advise scores the run on the whole val split itself
            started=started,
        )
        result.setdefault(
            "images_seen",
            int(result.get("global_step") or 0) * int(dm.batch_size) * int(trainer.accumulate_grad_batches),
        )
        if not trainer.fast_dev_run:
            # the weights at the end of the budget, by the trainer's own writer (without the optimizer state)
            final = run_dir / "checkpoints" / "final.ckpt"
            trainer.save_checkpoint(final, weights_only=True)
            result["final_checkpoint"] = str(final)
        return result

    return train_one


def plot_learning_curve(doc: dict, path: str | os.PathLike) -> Path:
    """``learning_curve.png``: the runs with their intervals, the fitted curve and its band, the
    extrapolation to ``factor`` times the labels shaded, and the hold-out prediction when there is one."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    from segbench.report.plots import _figure, _save

    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    unit = doc["unit"]
    curve = doc["curve"]
    cn = np.asarray(curve["n"], float)
    cy = np.asarray(curve["mAP"], float)
    lo = np.asarray([np.nan if v is None else v for v in curve["ci_low"]], float)
    hi = np.asarray([np.nan if v is None else v for v in curve["ci_high"]], float)
    n_max = max(r[unit] for r in doc["runs"])
    inside, beyond = cn <= n_max * (1 + 1e-9), cn >= n_max * (1 - 1e-9)
    fit = doc["fit"]
    label = "power law" if fit["model"] == "power_law" else "log-linear"
    ax.plot(cn[inside], cy[inside], color="C0", lw=2, label=f"fit ({label})")
    ax.plot(cn[beyond], cy[beyond], color="C0", lw=2, ls="--", label="extrapolation")
    if np.isfinite(lo).any():
        conf = int(round(100 * doc["bootstrap"]["confidence"]))
        ax.fill_between(
            cn[inside], lo[inside], hi[inside], color="C0", alpha=0.15, lw=0, label=f"{conf}% band"
        )
        ax.fill_between(cn[beyond], lo[beyond], hi[beyond], color="C1", alpha=0.25, lw=0)
    ax.axvspan(n_max, cn.max(), color="C1", alpha=0.08, lw=0)
    xs = np.asarray([p["n"] for p in doc["points"]], float)
    ys = np.asarray([p["measured"]["mAP"] for p in doc["points"]], float)
    err = None
    if all(p["measured"]["ci_low"] is not None for p in doc["points"]):
        err = np.abs(
            np.asarray([[p["measured"]["ci_low"], p["measured"]["ci_high"]] for p in doc["points"]]).T - ys
        )
    ax.errorbar(xs, ys, yerr=err, fmt="o", color="k", capsize=4, label="measured (val)", zorder=3)
    pred = doc["prediction"]
    if pred["mAP"] is not None:
        perr = None
        if pred["ci_low"] is not None:
            perr = [[pred["mAP"] - pred["ci_low"]], [pred["ci_high"] - pred["mAP"]]]
        ax.errorbar(
            [pred["n"]],
            [pred["mAP"]],
            yerr=perr,
            fmt="D",
            color="C1",
            capsize=4,
            zorder=3,
            label=f"{pred['factor']:g}x labels: {pred['mAP']:.3f}",
        )
    hc = doc.get("holdout_check") or {}
    if "predicted" in hc and hc["predicted"]["mAP"] is not None:
        ax.plot(
            [hc["n"]], [hc["predicted"]["mAP"]], "x", color="C3", ms=9, mew=2, label="hold-out prediction"
        )
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel(f"labelled {unit} (log scale)")
    ax.set_ylabel("val segm mAP")
    ax.set_title("How many labels you need")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summary_lines(doc: dict) -> list[str]:
    """What ``segbench advise`` prints: one line per run, the fit, the prediction, the hold-out check."""
    unit = doc["unit"]
    lines = [
        f"{'fraction':>8} {'images':>7} {'objects':>8} {'steps':>6} {'wall s':>7}  "
        "segm mAP (CI)        bbox mAP"
    ]
    for r in doc["runs"]:
        ci = r.get("segm_mAP_ci")
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(
            f"{r['fraction']:>8g} {r['images']:>7d} {r['objects']:>8d} {r['steps'] or 0:>6d} "
            f"{r['wall_seconds']:>7.0f}  {_fmt(r['segm_mAP'])} {ci_s:<15} {_fmt(r['bbox_mAP'])}"
        )
    fit = doc["fit"]
    lines.append(f"learning curve ({fit['model']}, n = labelled {unit}): {fit['formula']}")
    if fit.get("note"):
        lines.append(f"  (log-linear because {fit['note']})")
    p = doc["prediction"]
    conf = int(round(100 * doc["bootstrap"]["confidence"]))
    ci = f" ({conf}% CI {_fmt(p['ci_low'])} to {_fmt(p['ci_high'])})" if p["ci_low"] is not None else ""
    lines.append(
        f"expected val segm mAP with {p['factor']:g}x the labels ({p['n']:.0f} {unit}): "
        f"{_fmt(p['mAP'])}{ci}, "
        + (
            f"{p['curve_gain']:+.3f} over the curve at the largest run, "
            if p.get("curve_gain") is not None
            else ""
        )
        + f"{p['gain']:+.3f} over its measured value"
    )
    if doc.get("verdict"):
        lines.append(f"verdict: {doc['verdict']['text']}")
    hc = doc.get("holdout_check") or {}
    if "skipped" in hc:
        lines.append(f"hold-out check skipped: {hc['skipped']}")
    elif hc:
        m, q = hc["measured"], hc["predicted"]
        verdict = {True: "inside", False: "OUTSIDE", None: "(no interval)"}[hc["within_interval"]]
        lines.append(
            f"hold-out check: fitted without the largest run ({hc['fit']['model']}), predicted "
            f"{_fmt(q['mAP'])} [{_fmt(q['ci_low'])}, {_fmt(q['ci_high'])}] for {hc['n']:.0f} {unit}; "
            "measured "
            f"{_fmt(m['mAP'])} [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]: the prediction is {verdict} the "
            "measured value's interval"
        )
    return lines


def run(cfg: DictConfig) -> dict:
    """Train the recipe on nested subsets of the train split, fit a learning curve, predict the val segm mAP
    with twice the labels; write ``advise.json``, ``learning_curve.png`` and one run folder per fraction.

    Every run is the ``segbench train`` recipe composed from the same groups and overrides, with
    ``trainer.max_time`` = ``budget`` minutes, scored on the whole val split by the final evaluation of
    ``segbench train``, on its weights at the end of the budget (checkpoint=best: on its best checkpoint).
    The curve is a saturating power law ``a - b * n^(-c)`` (log-linear with fewer than 3 fractions or when
    it cannot be fitted); its intervals come from a paired bootstrap of the val images. With 3 or more
    fractions, the hold-out check fits without the largest run and says whether it predicts it.

    Keys: data (the dataset; its train split is subsampled), model, trainer, callbacks, logger (the recipe,
    as for train), name, seed (subsets, runs and bootstrap), budget (training minutes per run), fractions,
    unit (images or objects), factor (2: twice the labels), checkpoint (final or best), scale_epochs
    (epochs counted in passes over the whole train split), bootstrap (resamples; 0: no intervals),
    confidence, out, run_dir. The recipe: experiment=auto by default (chosen once from the whole train split,
    this machine and ``budget``, printed, saved as ``recipe.yaml`` in ``out``; every run uses it), or
    experiment=NAME (configs/experiment/; experiment=torchvision: the plain defaults).
    """
    from segbench.advise import advise, check_fractions

    try:
        budget = check_float("budget", cfg.budget, minimum=1e-3)
        scale_epochs = check_bool("scale_epochs", cfg.scale_epochs)
        factor = check_float("factor", cfg.factor, minimum=1.0)
    except ValueError as e:
        raise SegbenchError(f"{e} (budget is in minutes, e.g. budget=15)") from None
    fractions = check_fractions(
        OmegaConf.to_object(cfg.fractions) if OmegaConf.is_list(cfg.fractions) else cfg.fractions
    )
    if cfg.data.get("limit_train") is not None:
        raise SegbenchError(
            "data.limit_train is set, but advise chooses the training images itself (fractions=...); drop it"
        )
    recipe = None
    if _auto(cfg):
        # one recipe for every run, chosen from the whole train split: the runs differ in their labels only
        recipe = choose_auto_recipe(cfg)
        _apply(cfg, recipe.values())
        print(recipe.text())
        if cfg.recipe.get("dry_run"):
            print("recipe.dry_run=true: nothing trained (drop it to run the advice with this recipe)")
            return {"dry_run": True, "recipe": recipe.values()}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if recipe is not None:
        (out / RECIPE_FILE).write_text(recipe_text(cfg, recipe, run_dir=out, command_keys=_ADVISE_KEYS))
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    train_one = _make_train_one(
        cfg, n_train=len(dm.train_coco), budget_s=60.0 * budget, scale_epochs=bool(scale_epochs)
    )
    doc = advise(
        train_one,
        dm.train_coco,
        dm.val_coco,
        fractions=fractions,
        out=out,
        runs_dir=cfg.run_dir,
        seed=int(cfg.seed),
        unit=str(cfg.unit),
        n_resamples=int(cfg.bootstrap),
        confidence=float(cfg.confidence),
        factor=float(factor),
        checkpoint=str(cfg.checkpoint),
        eval_max_dets=cfg.model.get("eval_max_dets"),
        eval_score_threshold=cfg.model.get("eval_score_threshold", 0.5),
        extra={"name": cfg.name, "budget_minutes": budget, "scale_epochs": bool(scale_epochs)},
    )
    plot_learning_curve(doc, out / "learning_curve.png")
    print("\n".join(summary_lines(doc)))
    print(f"wrote {out / 'advise.json'} and {out / 'learning_curve.png'}")
    return doc
