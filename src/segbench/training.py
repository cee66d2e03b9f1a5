"""Training and checkpoint evaluation around the LightningModule and the data module.

Plain functions of ready objects (no config): the ``train`` and ``eval`` commands build the objects from
the config and call :func:`fit` / :func:`evaluate_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from segbench.eval.runner import evaluate_segmenter
from segbench.io import atomic_path, read_json, write_csv, write_json
from segbench.models.segmenter import cpu_has_bf16  # lives with the model code (models < training)
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

#: The exit status of a run stopped by SIGTERM after writing its checkpoint: 128 + 15, what a shell reports
#: for a process ended by SIGTERM. Not 0, so that a scheduler or wrapper that restarts failed jobs
#: (``sbatch --requeue`` scripts, Kubernetes ``restartPolicy: OnFailure``, torchelastic) runs it again;
#: distinct from 2 (a usage or data error, which a requeue would not fix) and 3 (a bug).
PREEMPTED_EXIT_CODE = 143

#: Passes the run folder that the launching process claimed to the DDP ranks Lightning starts from it.
RUN_DIR_ENV = "SEGBENCH_RUN_DIR"

#: The file whose exclusive creation makes a process the owner of a run folder (:func:`claim_run_dir`).
RUN_MARKER = "config.yaml"


class Preempted(SegbenchError):
    """Training was stopped by SIGTERM; its checkpoint at the current step is written (``resume=true``
    continues). The ``train`` command exits with :data:`PREEMPTED_EXIT_CODE`."""

    exit_code = PREEMPTED_EXIT_CODE


def cpu_precision() -> str:
    """``trainer.precision`` for CPU presets (the ``${cpu_precision:}`` resolver): ``bf16-mixed`` where the CPU
    has bfloat16 instructions, else ``32-true``."""
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def _natural_key(name: str) -> list:
    """Sort key in which the digit runs compare as numbers: ``..._10-00-00`` < ``..._10-00-00-2`` <
    ``..._10-00-00-10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", name)]


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints a run can be resumed from, ``last.ckpt`` first: every ``checkpoints/*.ckpt`` and the
    ``hpc_ckpt_*.ckpt`` that Lightning writes in the run folder on SLURM's requeue signal."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "checkpoints").glob("*.ckpt")) + sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    return sorted((p for p in found if p.is_file()), key=lambda p: p.name != "last.ckpt")


def latest_run(output_dir: str | os.PathLike, name: str) -> Path | None:
    """The newest run folder of ``name`` (by its start time, the folder name) that holds a checkpoint."""
    base = Path(output_dir) / "train" / name
    runs = sorted((p for p in base.glob("*/") if run_checkpoints(p)), key=lambda p: _natural_key(p.name))
    return runs[-1] if runs else None


def resume_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, list[tuple[Path, str]]]:
    """The checkpoint to resume ``run_dir`` from: the readable one with the highest step, ``last.ckpt`` on a
    tie (:func:`~segbench.models.checkpoint.newest_readable_checkpoint`), and the unreadable ones skipped,
    each logged with its reason.

    Raises
    ------
    SegbenchError
        No checkpoint in the run, or none readable (the message names every file).
    """
    from segbench.models.checkpoint import newest_readable_checkpoint

    candidates = run_checkpoints(run_dir)
    if not candidates:
        raise SegbenchError(
            f"cannot resume {run_dir}: it has no checkpoint (no {Path(run_dir) / 'checkpoints'}/*.ckpt)"
        )
    path, step, skipped = newest_readable_checkpoint(candidates, key="resume")
    for bad, why in skipped:
        log.warning("cannot resume from %s: %s", bad, why)
    if skipped:
        log.warning("resuming from %s (step %d), the newest readable checkpoint of %s", path, step, run_dir)
    return path, skipped


#: Written by global rank 0 into the run folder of a run started by torchrun or srun: the launcher, its job id
#: and the start time all ranks agreed on (a requeued SLURM job finds its run by it, :func:`requeued_run`).
LAUNCH_FILE = "launch.json"


def launcher(environ: Mapping[str, str] | None = None) -> str | None:
    """The external launcher that started this process as one rank of a distributed run: ``"torchrun"``
    (``TORCHELASTIC_RUN_ID`` in the environment; also when torchrun runs inside an srun step), ``"slurm"``
    (``SLURM_PROCID`` of a job step with more than one task, ``SLURM_NTASKS > 1``), else ``None`` (a plain
    command, or a DDP rank that Lightning itself started)."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "SLURM_PROCID" in env and "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS") or 1) > 1:
        return "slurm"
    return None


def is_global_zero(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is the global rank 0 of its run, from the environment alone (before Lightning
    starts): ``RANK`` (torchrun), ``SLURM_PROCID`` (srun), else ``NODE_RANK`` and ``LOCAL_RANK`` (the ranks
    Lightning starts); a process with none of them is rank 0."""
    env = os.environ if environ is None else environ
    if "RANK" in env:
        return env["RANK"] == "0"
    if launcher(env) == "slurm":
        return env["SLURM_PROCID"] == "0"
    return all(env.get(k, "0") == "0" for k in ("NODE_RANK", "GROUP_RANK", "LOCAL_RANK"))


def shared_start_time(environ: Mapping[str, str] | None = None, *, timeout: float = 300.0) -> str:
    """The start time (ISO 8601) that every rank of a run started by torchrun or srun agrees on, so that all
    resolve the same ``${now:}`` and hence the same run folder — never each node's own clock.

    - ``$SEGBENCH_START_TIME`` when set (inherited from segbench's own launching process, or exported by the
      user on every node).
    - torchrun: the clock of the first rank to ask, published in torchrun's rendezvous store (the agent's
      ``TCPStore`` at ``MASTER_ADDR:MASTER_PORT``, shared with the workers when
      ``TORCHELASTIC_USE_AGENT_STORE=True``, torch's default) under a key of the run id and restart count:
      ``compare_set`` makes one value win whichever node comes first.
    - srun: the job's start time ``$SLURM_JOB_START_TIME`` (Slurm 23.02 and later).
    - no external launcher: this process's clock.

    Raises
    ------
    SegbenchError
        torchrun without a shared store, or srun on a Slurm without ``SLURM_JOB_START_TIME``: the message says
        to export ``SEGBENCH_START_TIME`` (or to pass ``run_dir=``).
    """
    from datetime import datetime, timedelta

    env = os.environ if environ is None else environ
    if env.get("SEGBENCH_START_TIME"):
        return env["SEGBENCH_START_TIME"]
    mine = datetime.now().isoformat(timespec="microseconds")
    how = (
        "export the same SEGBENCH_START_TIME on every node (e.g. SEGBENCH_START_TIME=$(date +%Y-%m-%dT%H:%M:%S) "
        "before the launcher) or give every node the same run_dir=..."
    )
    kind = launcher(env)
    if kind == "torchrun":
        if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_ADDR" not in env:
            raise SegbenchError(
                "torchrun started this rank without sharing its rendezvous store "
                f"(TORCHELASTIC_USE_AGENT_STORE={env.get('TORCHELASTIC_USE_AGENT_STORE')}), so the nodes cannot "
                f"agree on one run folder: {how}"
            )
        from torch.distributed import TCPStore

        where = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT')}"
        key = f"segbench/start_time/{env['TORCHELASTIC_RUN_ID']}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        try:
            store = TCPStore(
                env["MASTER_ADDR"],
                int(env["MASTER_PORT"]),
                is_master=False,
                timeout=timedelta(seconds=timeout),
            )
            return store.compare_set(key, "", mine).decode()
        except (
            RuntimeError,
            OSError,
            ValueError,
        ) as e:  # DistNetworkError / DistStoreError are RuntimeErrors
            raise SegbenchError(
                f"cannot reach torchrun's rendezvous store at {where} to agree on the run folder ({e}); {how}"
            ) from None
    if kind == "slurm":
        start = env.get("SLURM_JOB_START_TIME")
        if not start:
            raise SegbenchError(
                f"srun started {env.get('SLURM_NTASKS')} tasks, but this Slurm sets no SLURM_JOB_START_TIME "
                f"(Slurm < 23.02), so the tasks cannot agree on one run folder: {how}"
            )
        return datetime.fromtimestamp(int(start)).isoformat(timespec="microseconds")
    return mine


def requeued_run(
    output_dir: str | os.PathLike, name: str, *, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The run folder a requeued SLURM job continues: when ``SLURM_RESTART_COUNT > 0``, the newest run of
    ``name`` whose :data:`LAUNCH_FILE` names this ``SLURM_JOB_ID`` and that holds a checkpoint (the
    ``hpc_ckpt_*.ckpt`` Lightning's ``SLURMEnvironment`` writes before requeueing, or ``last.ckpt``)."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job or int(env.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    base = Path(output_dir) / "train" / name
    runs = []
    for f in base.glob(f"*/{LAUNCH_FILE}"):
        try:
            if str(read_json(f).get("job_id")) == job and run_checkpoints(f.parent):
                runs.append(f.parent)
        except (OSError, ValueError):  # an unreadable launch file is not this job's
            continue
    return max(runs, key=lambda p: _natural_key(p.name)) if runs else None


def claim_run_dir(
    path: str | os.PathLike, *, environ: MutableMapping[str, str] | None = None, attempts: int = 1000
) -> tuple[Path, bool]:
    """The run folder a new run writes to, and whether this process owns it (and writes its config).

    The rule, by who started the process:

    - **A plain command** claims a folder: it owns the one whose ``config.yaml`` (:data:`RUN_MARKER`) it
      creates with exclusive creation (``open(..., "x")``), which the file system grants to one process
      only. Of two commands that resolve the same folder (the same ``name`` started in the same second),
      the first owns it and the second moves on to ``<folder>-2`` (then ``-3``...). The folder itself may
      exist already: Hydra makes each multirun job's folder before the job starts. The claimed folder is
      passed to the ranks Lightning starts in ``$SEGBENCH_RUN_DIR`` (:data:`RUN_DIR_ENV`, set here).
    - **A DDP rank that Lightning started** (``LOCAL_RANK`` in its environment, no external launcher)
      claims nothing and owns nothing: it uses ``$SEGBENCH_RUN_DIR`` (or ``path`` when there is none).
    - **A rank started by torchrun or srun** (:func:`launcher`), on any node, takes ``path`` as it is: every
      rank resolved the same ``path`` from the start time they share (:func:`shared_start_time`), and none
      may move to a ``-2`` the others would not know of. Only the global rank 0 (:func:`is_global_zero`;
      ``RANK``, not ``LOCAL_RANK``: each node has a local rank 0) owns it; it still creates the marker
      exclusively, and a folder already taken by another run is an error (the ranks of the other nodes
      cannot follow a new name) that says to pass ``run_dir=`` or another ``name=``.

    Parameters
    ----------
    path
        The folder the config asks for (``run_dir``).
    environ
        The environment to read and set (``os.environ``).
    attempts
        How many suffixes to try.
    """
    env = os.environ if environ is None else environ
    if launcher(env) is not None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        owner = is_global_zero(env)
        if owner:
            try:
                with open(folder / RUN_MARKER, "x", encoding="utf-8"):
                    pass
            except FileExistsError:
                raise SegbenchError(
                    f"{folder} belongs to another run (its {RUN_MARKER} exists) and the ranks on the other nodes "
                    "cannot follow this one to a new folder; give the run its own run_dir=... or name=..."
                ) from None
        return folder, owner
    if "LOCAL_RANK" in env:
        inherited = env.get(RUN_DIR_ENV)
        folder = Path(inherited or path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder, not inherited and is_global_zero(env)
    folder = claim_folder(path, marker=RUN_MARKER, attempts=attempts)
    env[RUN_DIR_ENV] = str(folder)
    return folder, True


def claim_folder(path: str | os.PathLike, *, marker: str, attempts: int = 1000) -> Path:
    """``path``, or the first of ``path-2``, ``path-3``... whose ``marker`` file this call creates
    (exclusive creation: one process wins each folder); the folder is made if needed.

    >>> import tempfile
    >>> base = Path(tempfile.mkdtemp()) / "run"
    >>> [claim_folder(base, marker="config.yaml").name for _ in range(3)]
    ['run', 'run-2', 'run-3']
    """
    base = Path(path)
    for k in range(1, attempts + 1):
        folder = base if k == 1 else base.with_name(f"{base.name}-{k}")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(folder / marker, "x", encoding="utf-8"):
                pass
        except FileExistsError:
            continue
        if k > 1:
            log.warning("%s belongs to another run; this one writes to %s", base, folder)
        return folder
    raise SegbenchError(
        f"cannot create a new folder: {base} and {attempts - 1} numbered variants are taken; "
        "give the run another name=... or run_dir=..."
    )


def fit(
    *,
    datamodule: pl.LightningDataModule,
    module: pl.LightningModule,
    trainer: pl.Trainer,
    run_dir: str | os.PathLike,
    ckpt_path: str | os.PathLike | None = None,
    evaluate_best: bool = True,
    eval_max_dets: int | None = None,
    eval_score_threshold: float | None = 0.5,
    started: float | None = None,
) -> dict:
    """Fit ``module`` on ``datamodule``; evaluate the best checkpoint on the val split; write
    ``<run_dir>/metrics.json``.

    Parameters
    ----------
    datamodule
        A :class:`~segbench.data.datamodule.CocoDataModule`, already ``setup("fit")``.
    module, trainer
        The LightningModule and the Trainer (its callbacks include a ``ModelCheckpoint``).
    run_dir
        The run folder.
    ckpt_path
        A checkpoint to resume from.
    evaluate_best
        Score the best (else the last) checkpoint on the whole val split at the end (rank 0 only) and
        store its calibrated per-class score thresholds in it (:func:`evaluate_checkpoint`).
    eval_max_dets, eval_score_threshold
        The evaluation's detection cap and the score threshold of F1 / PQ / foreground IoU.
    started
        ``time.perf_counter()`` when the command started (``train_wall_seconds`` counts from it).

    Returns
    -------
    dict
        ``run_dir``, ``global_step``, ``epochs``, ``train_wall_seconds``, ``history`` (validation metrics
        per epoch), ``skipped_batches``, ``best_checkpoint``, ``last_checkpoint``, ``best_val_segm_mAP``
        and ``val`` (the final evaluation).
    """
    t_start = time.perf_counter() if started is None else started
    run_dir = Path(run_dir)
    train_ds = datamodule.train_coco
    log.info(
        "training %s on %s: %d train / %d val images, %d classes %s; run folder %s",
        getattr(module, "net_kwargs", {}).get("backbone"),
        train_ds.ann_file.parent.parent,
        len(train_ds),
        len(datamodule.val_coco),
        train_ds.num_classes,
        train_ds.class_names,
        run_dir,
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # Lightning's stop at a batch boundary after SIGTERM (a SystemExit with code 0)
        saved = [getattr(cb, "saved", None) for cb in trainer.callbacks]
        saved = [p for p in saved if p]
        where = (
            f"its checkpoint at that step is {saved[0]}"
            if saved
            else f"no checkpoint was written at the stop; the newest is in {run_dir / 'checkpoints'}"
        )
        raise Preempted(
            f"training stopped by SIGTERM after step {trainer.global_step}; {where}. Continue with the same "
            f"command and resume=true (exit status {PREEMPTED_EXIT_CODE}: the job can be requeued)"
        ) from None
    result: dict = {
        "run_dir": str(run_dir),
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_wall_seconds": time.perf_counter() - t_start,
        "history": module.history,
        "skipped_batches": module.skipped_batches,
    }
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best_cb = next((c for c in checkpoints if c.monitor), None)  # the best by val/segm_mAP
    last_cb = next((c for c in checkpoints if not c.monitor), None)  # last.ckpt, at every save point
    if best_cb is not None:
        result["best_checkpoint"] = best_cb.best_model_path or None
        result["best_val_segm_mAP"] = (
            float(best_cb.best_model_score) if best_cb.best_model_score is not None else None
        )
    if last_cb is not None:
        result["last_checkpoint"] = last_cb.best_model_path or None
    if evaluate_best and trainer.is_global_zero and not trainer.fast_dev_run:
        best = result.get("best_checkpoint") or result.get("last_checkpoint")
        if best:
            result["val"] = evaluate_checkpoint(
                best,
                datamodule.val_coco,
                out_dir=run_dir / "eval",
                max_dets=eval_max_dets,
                score_threshold=eval_score_threshold,
                store_thresholds=True,
            )
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result


def save_checkpoint(module: pl.LightningModule, path: str | os.PathLike) -> Path:
    """Write ``module`` as a checkpoint exactly as ``segbench train`` does (Lightning's writer, the
    module's ``on_save_checkpoint`` card, atomically as :class:`~segbench.callbacks.AtomicCheckpointIO`), without
    training: e.g. to evaluate or export a model built in code."""
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    with atomic_path(path) as tmp:  # the writer AtomicCheckpointIO uses (callbacks sit on this floor)
        trainer.save_checkpoint(tmp)
    return Path(path)


def evaluate_checkpoint(
    ckpt_path: str | os.PathLike,
    dataset,
    *,
    out_dir: str | os.PathLike,
    max_dets: int | None = None,
    score_threshold: float | None = 0.5,
    limit: int | None = None,
    progress: bool = True,
    store_thresholds: bool = False,
    label_errors: bool = False,
) -> dict:
    """Score a checkpoint on a :class:`CocoDataset` and analyse its errors.

    Writes to ``out_dir``: ``metrics.json`` (every score, plus ``analysis``: the confusion matrix and the
    error breakdown at ``score_threshold``, and ``score_thresholds``: per class, the threshold that maximises
    F1 at IoU 0.5 on this split), ``results.json`` (COCO results with the dataset's category ids),
    ``per_image.csv`` and, with ``label_errors``, ``label_errors.json`` + ``label_errors_patch.json``
    (:func:`segbench.eval.analysis.find_label_errors`). ``store_thresholds`` writes the calibrated
    thresholds into the checkpoint's card, where ``predict`` and ``export`` find them.
    """
    from segbench.models.checkpoint import check_classes
    from segbench.models.segmenter import MaskRCNNSegmenter

    seg, card = MaskRCNNSegmenter.from_checkpoint(ckpt_path)
    check_classes(card, dataset, source=ckpt_path, action="evaluate")
    metrics, ev = evaluate_segmenter(
        seg, dataset, max_dets=max_dets, score_threshold=score_threshold, limit=limit, progress=progress
    )
    return write_evaluation(
        ckpt_path,
        dataset,
        metrics,
        ev,
        out_dir=out_dir,
        score_threshold=score_threshold,
        store_thresholds=store_thresholds,
        label_errors=label_errors,
    )


def write_evaluation(
    ckpt_path: str | os.PathLike,
    dataset,
    metrics: dict,
    ev,
    *,
    out_dir: str | os.PathLike,
    score_threshold: float | None = 0.5,
    store_thresholds: bool = False,
    label_errors: bool = False,
) -> dict:
    """The second half of :func:`evaluate_checkpoint`, for scores computed elsewhere (one process, or the
    merged shards of :func:`segbench.distributed.evaluate_checkpoint_distributed`): the error analysis,
    the calibrated thresholds and the files, from ``metrics`` and the
    :class:`~segbench.eval.metrics.Evaluator` ``ev`` that holds the results and matches."""
    from segbench.eval.analysis import analyse, find_label_errors, per_image_table, thresholds_by_name
    from segbench.io import write_csv
    from segbench.models.checkpoint import update_card

    gt = ev.gt_dataset()
    analysis = analyse(gt, ev.results, score_threshold=score_threshold)
    thresholds = thresholds_by_name(analysis.pop("calibrated"))
    metrics.update(
        checkpoint=str(ckpt_path),
        dataset=str(dataset.ann_file),
        analysis=analysis,
        score_thresholds=thresholds,
    )
    out = Path(out_dir)
    write_json(out / "results.json", ev.results)
    write_csv(out / "per_image.csv", per_image_table(gt["images"], ev.image_matches))
    if label_errors:
        found = find_label_errors(gt, ev.results, thresholds=thresholds)
        write_json(out / "label_errors_patch.json", found.pop("patch"))
        write_json(out / "label_errors.json", found)
        metrics["label_errors"] = found["counts"]
    write_json(out / "metrics.json", metrics)
    if store_thresholds:
        update_card(ckpt_path, score_thresholds=thresholds)
        log.info("calibrated score thresholds %s stored in %s", thresholds, ckpt_path)
    return metrics


#: The columns of a multirun's ``sweep.csv``, one row per job.
SWEEP_COLUMNS = ["job", "overrides", "best_val_segm_mAP", "wall_s", "run_dir", "status", "error"]
#: The file in each job's folder that holds its row of ``sweep.csv``.
SWEEP_ROW = "sweep_job.json"


def write_sweep_row(job_dir: str | os.PathLike, row: dict) -> Path:
    """Write one job's row of ``sweep.csv`` (keys :data:`SWEEP_COLUMNS`) into its folder, atomically."""
    return write_json(Path(job_dir) / SWEEP_ROW, {k: row.get(k) for k in SWEEP_COLUMNS})


def write_sweep_summary(sweep_dir: str | os.PathLike) -> tuple[Path, list[dict]]:
    """Collect the rows the jobs of a sweep wrote (:func:`write_sweep_row`) into ``<sweep_dir>/sweep.csv``,
    ordered by job number; returns the file and the rows.

    Each job writes its own row file and the table is rebuilt from them, so that jobs that run in parallel
    processes (``hydra/launcher=submitit_local``) never write one file at the same time.
    """
    sweep_dir = Path(sweep_dir)
    rows = []
    for p in sweep_dir.rglob(SWEEP_ROW):
        try:
            rows.append(read_json(p, what="sweep row"))
        except SegbenchError as e:  # pragma: no cover - written atomically, so only a hand-edited file
            log.warning("%s", e)
    rows.sort(key=lambda r: (r.get("job") is None, r.get("job") if isinstance(r.get("job"), int) else 0))
    return write_csv(sweep_dir / "sweep.csv", rows, columns=SWEEP_COLUMNS), rows
