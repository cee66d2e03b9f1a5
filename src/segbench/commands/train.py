"""``segbench train [experiment=NAME] [data.root=DIR] [key=value ...]``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segbench.io import atomic_write_text, write_json
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


def _launch_record() -> dict:
    """What :data:`~segbench.training.LAUNCH_FILE` records of the external launcher (torchrun or srun)."""
    env = os.environ
    slurm = "SLURM_JOB_ID" in env and "TORCHELASTIC_RUN_ID" not in env
    return {
        "launcher": "slurm" if slurm else "torchrun",
        "job_id": env.get("SLURM_JOB_ID") if slurm else env.get("TORCHELASTIC_RUN_ID"),
        "world_size": int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1),
        "num_nodes": int(env.get("GROUP_WORLD_SIZE") or env.get("SLURM_NNODES") or 1),
        "start_time": env.get("SEGBENCH_START_TIME"),
    }


def _instantiate_all(group: DictConfig | None) -> list:
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def build_run(cfg: DictConfig, run_dir: Path, **data_kwargs):
    """The data module (set up for fit), the LightningModule and the Trainer that ``cfg`` names, for a run
    in ``run_dir`` (``segbench train`` and each run of ``segbench advise``)."""
    dm = instantiate(cfg.data, **data_kwargs, _convert_="all")
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
    trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=_instantiate_all(cfg.get("logger")) or False,
        default_root_dir=str(run_dir),
        _convert_="all",
    )
    return dm, module, trainer


def _refuse_ddp_in_multirun(trainer) -> None:
    """Lightning starts DDP ranks by running the command line again, which in a multirun job would start
    the whole sweep again in every rank; only ranks started by the cluster (srun) work there."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if trainer.world_size <= 1 or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    env = getattr(trainer.strategy, "cluster_environment", None)
    if env is None or not env.creates_processes_externally:
        raise SegbenchError(
            f"a multirun job cannot start {trainer.world_size} DDP processes itself (each would run the whole "
            "sweep again); sweep with trainer.devices=1, or on SLURM with hydra/launcher=submitit_slurm and "
            "hydra.launcher.tasks_per_node=<devices> so that srun starts the ranks"
        )


def run(cfg: DictConfig) -> dict:
    """Train Mask R-CNN on ``data`` with ``model`` / ``trainer``; write the run folder; return its metrics.

    The run folder (``run_dir``) holds ``config.yaml`` (resolved), ``checkpoints/`` (best by
    ``val/segm_mAP`` and ``last.ckpt``), ``logs/metrics.csv`` and ``metrics.json``. Two runs never share
    one: a run whose folder another run already took (the same name started in the same second) writes
    to ``<run_dir>-2``.

    Keys: data (the dataset and its loader), model (network, optimizer, schedule), trainer, callbacks,
    logger, name, seed, run_dir, resume (continue the latest run of name, or run_dir when it holds
    checkpoints, from its newest readable checkpoint), ckpt_path (resume a given checkpoint),
    test_after_fit. Presets: experiment=NAME (configs/experiment/). Sweeps: ``segbench train -m
    key=a,b ...`` (Hydra multirun; hparams_search=maskrcnn_optuna for Optuna) writes one run folder per
    job and sweep.csv. SIGTERM stops at the next batch with a checkpoint of that step (exit status 143).
    Multi-node: the same command on every node under torchrun or srun with trainer.num_nodes=N (trainer=slurm
    on SLURM, with auto-requeue); all ranks share one run folder, written by global rank 0, and a requeued
    SLURM job continues its own run (docs/guide.md, "Multi-node training").
    """
    from segbench.callbacks import publish_run
    from segbench.models.checkpoint import read_checkpoint
    from segbench.training import (
        LAUNCH_FILE,
        claim_run_dir,
        fit,
        is_global_zero,
        latest_run,
        launcher,
        requeued_run,
        resume_checkpoint,
        run_checkpoints,
    )

    started = time.perf_counter()
    ckpt_path = cfg.get("ckpt_path")
    run_dir = Path(cfg.run_dir)
    requeued = None if cfg.get("resume") or ckpt_path else requeued_run(cfg.paths.output_dir, cfg.name)
    if requeued is not None:
        log.info("SLURM requeued job %s: continuing its run %s", os.environ.get("SLURM_JOB_ID"), requeued)
    if (cfg.get("resume") or requeued is not None) and not ckpt_path:
        prev = requeued or (
            run_dir if run_checkpoints(run_dir) else latest_run(cfg.paths.output_dir, cfg.name)
        )
        if prev is None:
            raise SegbenchError(
                f"resume=true but no earlier run of '{cfg.name}' with a checkpoint under "
                f"{Path(cfg.paths.output_dir) / 'train' / cfg.name}; start a new run or pass ckpt_path=FILE"
            )
        if prev != run_dir:
            _rebase(cfg, str(cfg.run_dir), str(prev))
            cfg.run_dir = str(prev)
        run_dir = prev
        ckpt, skipped = resume_checkpoint(prev)  # the newest readable one: a damaged last.ckpt is skipped
        if skipped:
            print(
                f"resuming from {ckpt}: skipped unreadable "
                + ", ".join(p.name for p, _ in skipped)
                + " (reasons in the log above)"
            )
        ckpt_path = str(ckpt)
        owner = is_global_zero()  # RANK / SLURM_PROCID: each node of a multi-node run has a LOCAL_RANK 0
        log.info("resuming %s from %s", prev, ckpt_path)
    else:
        if ckpt_path:  # refuses missing, unsafe or foreign files before any work
            read_checkpoint(ckpt_path, key="ckpt_path")
        run_dir, owner = claim_run_dir(run_dir)
        if str(run_dir) != str(cfg.run_dir):
            _rebase(cfg, str(cfg.run_dir), str(run_dir))
            cfg.run_dir = str(run_dir)
    if owner:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        if (launcher() is not None or "SLURM_JOB_ID" in os.environ) and requeued is None:
            write_json(run_dir / LAUNCH_FILE, _launch_record())  # a requeued SLURM job finds its run by it
    if cfg.get("seed") is not None:
        import pytorch_lightning as pl

        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    dm, module, trainer = build_run(cfg, run_dir)
    _refuse_ddp_in_multirun(trainer)
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
    publish_run(trainer, result)  # logger=mlflow / wandb: the final report and best checkpoint (TrackRun)
    if trainer.is_global_zero:
        print(f"run folder: {run_dir}")
        if result.get("val"):
            print(format_metrics_table(result["val"]))
    return result
