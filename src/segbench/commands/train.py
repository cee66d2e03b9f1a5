"""``segbench train [experiment=NAME] [data.root=DIR] [key=value ...]``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segbench.report.tables import format_metrics_table
from segbench.types import SegbenchError

log = logging.getLogger(__name__)


def _rebase(cfg: DictConfig, old: str, new: str) -> None:
    """Replace the prefix ``old`` by ``new`` in every string value of a resolved config (resume: the
    earlier run's folder replaces the new one everywhere it appears)."""
    for key in list(cfg.keys()):
        v = cfg[key]
        if isinstance(v, DictConfig):
            _rebase(v, old, new)
        elif isinstance(v, str) and v.startswith(old):
            cfg[key] = new + v[len(old) :]


def _instantiate_all(group: DictConfig | None) -> list:
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def run(cfg: DictConfig) -> dict:
    """Train Mask R-CNN on ``data`` with ``model`` / ``trainer``; write the run folder; return its metrics.

    The run folder (``run_dir``) holds ``config.yaml`` (resolved), ``checkpoints/`` (best by
    ``val/segm_mAP`` and ``last.ckpt``), ``logs/metrics.csv`` and ``metrics.json``.

    Keys: data (the dataset and its loader), model (network, optimizer, schedule), trainer, callbacks,
    logger, name, seed, run_dir, resume (continue the latest run of name), ckpt_path (resume a given
    checkpoint), test_after_fit. Presets: experiment=NAME (configs/experiment/).
    """
    from segbench.models.checkpoint import read_checkpoint
    from segbench.training import fit, latest_run

    started = time.perf_counter()
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
    if ckpt_path:
        read_checkpoint(
            ckpt_path, key="ckpt_path"
        )  # refuses missing, unsafe or foreign files before any work
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if cfg.get("seed") is not None:
        import pytorch_lightning as pl

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
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=loggers or False,
        default_root_dir=str(run_dir),
        _convert_="all",
    )
    result = fit(
        datamodule=dm,
        module=module,
        trainer=trainer,
        run_dir=run_dir,
        ckpt_path=ckpt_path,
        evaluate_best=bool(cfg.get("test_after_fit")),
        eval_max_dets=cfg.model.get("eval_max_dets"),
        eval_score_threshold=cfg.model.get("eval_score_threshold", 0.5),
        started=started,
    )
    if trainer.is_global_zero:
        print(f"run folder: {run_dir}")
        if result.get("val"):
            print(format_metrics_table(result["val"]))
    return result
