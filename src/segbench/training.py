"""``segbench train`` and ``segbench eval``: plain functions of a composed config.

This is where Hydra configs meet Lightning objects; the work itself lives in the data module, the
LightningModule and :mod:`segbench.eval`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from weakref import proxy

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from segbench.eval.runner import evaluate_segmenter, format_metrics_table, write_json
from segbench.types import SegbenchError

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), which make ``bf16-mixed`` training
    faster than float32; without them autocast emulates bfloat16 and is slower."""
    import torch

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # pragma: no cover - a torch build without the probe's backend
            continue
    return False


def cpu_precision() -> str:
    """``trainer.precision`` for CPU presets (the ``${cpu_precision:}`` resolver): ``bf16-mixed`` where the CPU
    has bfloat16 instructions, else ``32-true``."""
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


class AtomicModelCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose files are written to a temporary name and renamed into place, and whose
    ``last.ckpt`` is written at every save point.

    A process killed while saving leaves the previous checkpoint intact (a rename is atomic). Lightning
    2.6 rewrites ``last.ckpt`` only when a top-k checkpoint was saved at that step, so a run whose metric
    stopped improving would resume from an old state; here ``last.ckpt`` always follows the run.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class RNGStateCallback(pl.Callback):
    """Saves the random generators (torch, numpy, python) in checkpoints and restores them on resume, so
    that a resumed run draws the same shuffles and augmentations as an uninterrupted one."""

    def state_dict(self) -> dict:
        import random

        import numpy as np
        import torch

        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(np_state[1].astype("int64")),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "gauss": float(np_state[4]),
            },
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        import random

        import numpy as np
        import torch

        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"])
        )
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))


def latest_run(output_dir: str | os.PathLike, name: str) -> Path | None:
    """The newest run folder of ``name`` that holds ``checkpoints/last.ckpt``."""
    base = Path(output_dir) / "train" / name
    runs = sorted(p.parent.parent for p in base.glob("*/checkpoints/last.ckpt"))
    return runs[-1] if runs else None


def _rebase(cfg: DictConfig, old: str, new: str) -> None:
    """Replace the prefix ``old`` by ``new`` in every string value of a resolved config."""
    for key in list(cfg.keys()):
        v = cfg[key]
        if isinstance(v, DictConfig):
            _rebase(v, old, new)
        elif isinstance(v, str) and v.startswith(old):
            cfg[key] = new + v[len(old) :]


def _instantiate_all(group: DictConfig | None) -> list:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> dict:
    """Train Mask R-CNN on ``data`` with ``model`` / ``trainer``; write the run folder; return its metrics.

    The run folder (``run_dir``) holds ``config.yaml`` (resolved), ``checkpoints/`` (best by
    ``val/segm_mAP`` and ``last.ckpt``), ``logs/metrics.csv`` and ``metrics.json``.
    """
    from hydra.utils import instantiate

    t_start = time.perf_counter()
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("resume") and not ckpt_path:
        prev = latest_run(cfg.paths.output_dir, cfg.name)
        if prev is None:
            raise SegbenchError(
                f"resume=true but no earlier run of '{cfg.name}' with a last.ckpt under "
                f"{Path(cfg.paths.output_dir) / 'train' / cfg.name}; start a new run or pass ckpt_path=FILE"
            )
        _rebase(cfg, str(cfg.run_dir), str(prev))
        cfg.run_dir = str(prev)
        ckpt_path = str(prev / "checkpoints" / "last.ckpt")
        log.info("resuming %s from %s", prev, ckpt_path)
    if ckpt_path and not Path(ckpt_path).is_file():
        raise SegbenchError(f"ckpt_path={ckpt_path} does not exist")
    if ckpt_path:
        from segbench.models.segmenter import load_checkpoint_file

        load_checkpoint_file(ckpt_path)  # refuses unsafe or foreign files before any work
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    train_ds = dm.train_coco
    module = instantiate(
        cfg.model,
        num_classes=train_ds.num_classes,
        class_names=train_ds.class_names,
        categories=train_ds.categories,
        label_to_cat_id=train_ds.label_to_cat_id,
        _convert_="all",
    )
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run_dir),
        _convert_="all",
    )
    log.info(
        "training %s on %s: %d train / %d val images, %d classes %s; run folder %s",
        module.net_kwargs.get("backbone"),
        train_ds.ann_file.parent.parent,
        len(train_ds),
        len(dm.val_coco),
        train_ds.num_classes,
        train_ds.class_names,
        run_dir,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - t_start

    result: dict = {
        "run_dir": str(run_dir),
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_wall_seconds": train_seconds,
        "history": module.history,
        "skipped_batches": module.skipped_batches,
    }
    ckpt_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if ckpt_cb is not None:
        result["best_checkpoint"] = ckpt_cb.best_model_path or None
        result["last_checkpoint"] = ckpt_cb.last_model_path or None
        result["best_val_segm_mAP"] = (
            float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None
        )
    if cfg.get("test_after_fit") and trainer.is_global_zero and not cfg.trainer.get("fast_dev_run"):
        best = result.get("best_checkpoint") or result.get("last_checkpoint")
        if best:
            metrics = evaluate_checkpoint(
                best,
                dm.val_coco,
                out_dir=run_dir / "eval",
                max_dets=cfg.model.get("eval_max_dets"),
                score_threshold=cfg.model.get("eval_score_threshold", 0.5),
            )
            result["val"] = metrics
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
        print(f"run folder: {run_dir}")
        if result.get("val"):
            print(format_metrics_table(result["val"]))
    return result


def evaluate_checkpoint(
    ckpt_path: str | os.PathLike,
    dataset,
    *,
    out_dir: str | os.PathLike,
    max_dets: int | None = None,
    score_threshold: float | None = 0.5,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Score a checkpoint on a :class:`CocoDataset`; write ``metrics.json`` and ``results.json`` (COCO
    results with the dataset's original category ids) to ``out_dir``."""
    from segbench.models.segmenter import MaskRCNNSegmenter

    seg, meta = MaskRCNNSegmenter.from_checkpoint(ckpt_path)
    if list(meta["class_names"]) != list(dataset.class_names):
        raise SegbenchError(
            f"{ckpt_path} was trained on classes {meta['class_names']} but {dataset.ann_file} has "
            f"{dataset.class_names}; evaluate on a dataset with the same categories"
        )
    metrics, ev = evaluate_segmenter(
        seg, dataset, max_dets=max_dets, score_threshold=score_threshold, limit=limit, progress=progress
    )
    metrics["checkpoint"] = str(ckpt_path)
    metrics["dataset"] = str(dataset.ann_file)
    out = Path(out_dir)
    write_json(out / "results.json", ev.results)
    write_json(out / "metrics.json", metrics)
    return metrics


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``ckpt_path`` on a split of ``data``: ``metrics.json`` + COCO ``results.json`` in ``out``."""
    from segbench.commands import open_data_split

    ds = open_data_split(cfg.data, cfg.split)
    m = evaluate_checkpoint(
        cfg.ckpt_path,
        ds,
        out_dir=cfg.out,
        max_dets=cfg.max_dets,
        score_threshold=cfg.score_threshold,
        limit=cfg.get("limit"),
    )
    print(format_metrics_table(m))
    print(f"wrote {Path(cfg.out) / 'metrics.json'} and {Path(cfg.out) / 'results.json'}")
    return m
