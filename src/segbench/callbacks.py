"""Lightning plugins and callbacks of segbench's training: atomic checkpoint files, a checkpoint when
SIGTERM stops the run, random-generator state, weight EMA.

Which checkpoints are kept is Lightning's own ``ModelCheckpoint`` (``configs/callbacks/default.yaml``).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from segbench.io import atomic_path
from segbench.types import SegbenchError

log = logging.getLogger(__name__)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def write_error_message(path: str | os.PathLike, exc: OSError) -> str:
    """A one-line account of a failed write of ``path``: the OS's reason and the free space on its disk
    (:func:`shutil.disk_usage` of the nearest existing parent folder).

    >>> write_error_message("/", OSError(28, "No space left on device")).startswith("cannot write / (")
    True
    """
    path = Path(path)
    reason = exc.strerror or str(exc) or type(exc).__name__
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
        space = f"{_size(usage.free)} free of {_size(usage.total)} on the disk of {folder}"
    except OSError:  # pragma: no cover - the folder vanished or is unreadable
        space = f"free space on the disk of {folder} unknown"
    return f"cannot write {path} ({reason}; {space})"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose files appear whole or not at all.

    The checkpoint is written to ``<name>.tmp`` and renamed into place (:func:`segbench.io.atomic_path`),
    so a process killed while saving leaves the previous checkpoint intact. Plugged in through the
    Trainer's public ``plugins=`` (``configs/trainer/default.yaml``) instead of overriding
    ``ModelCheckpoint`` internals.

    A failed write (disk full, quota, permissions: any ``OSError``) removes the temporary file, keeps the
    previous checkpoint, and stops training with a :class:`SegbenchError` that names the file and the free
    space on its disk (the ``train`` command exits with status 2).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        try:
            with atomic_path(path) as tmp:
                super().save_checkpoint(checkpoint, tmp, storage_options=storage_options)
        except OSError as e:
            kept = " (the previous checkpoint there is intact)" if Path(path).exists() else ""
            raise SegbenchError(
                f"training stopped: {write_error_message(path, e)}{kept}. Free some space (or set "
                "paths.output_dir to a larger disk) and continue with resume=true."
            ) from e


class CheckpointOnSigterm(pl.Callback):
    """Writes ``<dirpath>/<filename>.ckpt`` at the current step when SIGTERM stops the run.

    SIGTERM is what SLURM, Kubernetes and most job schedulers send before they preempt or cancel a job.
    Lightning's own signal handling catches it: the Trainer finishes the batch it is on and raises
    ``SIGTERMException`` at the next batch boundary, and this callback (through Lightning's
    ``on_exception`` hook, as its ``OnExceptionCheckpoint`` does) saves the state there, so that
    ``resume=true`` continues from that step. Lightning's ``OnExceptionCheckpoint`` is not used because it
    saves on every exception (a bad config, a NaN loss) and deletes its file at teardown.

    Parameters
    ----------
    dirpath
        The checkpoint folder (``${run_dir}/checkpoints``).
    filename
        The file name without ``.ckpt``: ``last``, the file ``resume=true`` starts from.
    """

    def __init__(self, dirpath: str | os.PathLike, filename: str = "last") -> None:
        if not filename:
            raise ValueError("CheckpointOnSigterm: filename must not be empty, e.g. filename=last")
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.saved: Path | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        trainer.save_checkpoint(self.ckpt_path)
        self.saved = self.ckpt_path
        log.warning("SIGTERM: checkpoint at step %d written to %s", trainer.global_step, self.ckpt_path)


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


def _ramped_ema(averaged, current, num_averaged, *, decay: float):
    """One EMA update with TensorFlow's ``ExponentialMovingAverage(num_updates=n)`` rule: the decay is
    ``min(decay, (1 + n) / (10 + n))``, so the average follows the weights early on and a run of a few
    hundred steps averages its last ~10 % of updates instead of remembering its random start."""
    n = float(num_averaged)
    d = min(decay, (1.0 + n) / (10.0 + n))
    return averaged * d + current * (1.0 - d)


class EMA(WeightAveraging):
    """Weight EMA by Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging` (which swaps the
    averaged weights in for every validation, saves them as the checkpoint's ``state_dict`` — so the best
    checkpoint and the evaluation use them — and keeps the raw weights for a resume), with a decay that
    ramps up (:func:`_ramped_ema`): Lightning's ``EMAWeightAveraging`` has a fixed decay, which over the few
    hundred steps of a CPU budget is still mostly the initial weights.

    Parameters
    ----------
    decay
        The largest decay (reached after ``(10 decay - 1) / (1 - decay)`` updates: ~9000 for 0.999).
    start_step
        Optimizer steps before the first update (e.g. the warm-up).
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise SegbenchError(f"callbacks.ema.decay must be between 0 and 1, got {decay!r}")
        if int(start_step) < 0:
            raise SegbenchError(f"callbacks.ema.start_step must be >= 0, got {start_step!r}")
        super().__init__(use_buffers=True, avg_fn=functools.partial(_ramped_ema, decay=float(decay)))
        self.decay = float(decay)
        self.start_step = int(start_step)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step


# --- experiment trackers (logger=mlflow, logger=wandb) ----------------------------------------------------

#: Characters MLflow allows in a param or metric key; any other becomes ``_`` in :func:`flatten_config`.
_KEY_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /")


def flatten_config(node: Any, prefix: str = "", *, max_len: int = 6000) -> dict[str, Any]:
    """A nested config (dicts and lists, e.g. ``OmegaConf.to_container`` of a resolved config) as one level
    of dotted keys, list items by index, for a tracker's flat parameter table.

    Leaves keep their type (numbers, booleans, ``None``); a string longer than ``max_len`` (MLflow's limit on
    a param value, 6000 characters) is cut to it, an empty dict or list becomes ``"{}"`` / ``"[]"``, and a
    character MLflow refuses in a key becomes ``_``.

    >>> flatten_config({"model": {"lr": 0.01, "net": {"backbone": "r18"}}, "tf": [{"p": 0.5}], "cb": {}})
    {'model.lr': 0.01, 'model.net.backbone': 'r18', 'tf.0.p': 0.5, 'cb': '{}'}
    """
    items: list[tuple[str, Any]]
    if isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(str(k), v) for k, v in enumerate(node)]
    else:
        if isinstance(node, str) and len(node) > max_len:
            node = node[:max_len]
        return {prefix: node}
    if not items:
        return {prefix: "[]" if isinstance(node, (list, tuple)) else "{}"} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in items:
        key = "".join(c if c in _KEY_OK else "_" for c in (f"{prefix}.{k}" if prefix else k))
        out.update(flatten_config(v, key, max_len=max_len))
    return out


class TrackRun(pl.Callback):
    """Completes what Lightning's own tracker loggers (``MLFlowLogger``, ``WandbLogger``,
    ``TensorBoardLogger``) record of a ``segbench train`` run; with the CSV logger alone it does nothing.

    - At fit start, the resolved config (``<run_dir>/config.yaml``) as hyperparameters, flattened to dotted
      keys (:func:`flatten_config`), through each logger's ``log_hyperparams`` (not the CSV logger's:
      ``config.yaml`` lies beside its files). The metrics of each step are the loggers' own work.
    - :meth:`publish`, called by the ``train`` command (:func:`publish_run`) after the final evaluation: the
      final scores (``final/<key>``) and, as artifacts, the run folder's files (``metrics.json``,
      ``eval/per_image.csv``, ``eval/metrics.json`` with the calibrated thresholds, ``config.yaml``, the CSV
      logs...) with the best checkpoint under ``checkpoints/``: to MLflow as run artifacts, to W&B as saved
      run files (the checkpoint stays in the run folder: W&B takes models as uploaded artifacts, which an
      offline run cannot make; config.yaml neither: it is the W&B run config already). The W&B run is then
      finished.

    The final evaluation runs after ``trainer.fit`` returns (it scores the best checkpoint and stores its
    thresholds in it), when no Lightning hook is left to call, hence the explicit :meth:`publish`.

    Parameters
    ----------
    run_dir
        The run folder (``${run_dir}``).
    exclude
        ``fnmatch`` patterns of the run folder's paths (relative, ``/``-separated) not to publish: the
        checkpoints (the best one is published on its own) and the trackers' own folders.
    log_checkpoint
        Publish the best checkpoint to MLflow (a copy in its artifact store: about 250 MB for
        ``maskrcnn_r18`` with its optimizer state).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        exclude: tuple[str, ...] | list[str] = (
            "checkpoints/*",
            "*.ckpt",
            "*.tmp",
            "wandb/*",
            "tb/*",
            "mlruns/*",
        ),
        log_checkpoint: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.exclude = tuple(exclude)
        self.log_checkpoint = log_checkpoint

    @staticmethod
    def _trackers(trainer: pl.Trainer) -> list:
        from pytorch_lightning.loggers import CSVLogger

        return [lg for lg in trainer.loggers if not isinstance(lg, CSVLogger)]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trackers = self._trackers(trainer)
        if not trackers or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        config = self.run_dir / "config.yaml"
        if not config.is_file():
            log.warning("%s is missing: the trackers get no parameters", config)
            return
        import yaml  # config.yaml is the resolved config: plain YAML (omegaconf stays in cli and commands)

        params = flatten_config(yaml.safe_load(config.read_text(encoding="utf-8")) or {})
        for lg in trackers:
            lg.log_hyperparams(params)

    def report_files(self) -> list[Path]:
        """The run folder's files that :meth:`publish` logs, sorted (not :attr:`exclude`)."""
        from fnmatch import fnmatch

        files = []
        for p in sorted(self.run_dir.rglob("*")):
            rel = p.relative_to(self.run_dir).as_posix()
            if p.is_file() and not any(fnmatch(rel, pat) for pat in self.exclude):
                files.append(p)
        return files

    def publish(self, trainer: pl.Trainer, result: dict) -> None:
        """Log the final scores, the report files and the best checkpoint of a finished run (see the class
        docstring). A tracker that fails (a server that is down) is named in the log; the run folder is
        complete anyway, so the command goes on."""
        from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        val = result.get("val") or {}
        final = {f"final/{k}": float(v) for k, v in val.items() if _is_number(v)}
        if _is_number(result.get("best_val_segm_mAP")):
            final["final/best_val_segm_mAP"] = float(result["best_val_segm_mAP"])
        best = (
            (result.get("best_checkpoint") or result.get("last_checkpoint")) if self.log_checkpoint else None
        )
        files = self.report_files()
        for lg in self._trackers(trainer):
            try:
                if isinstance(lg, MLFlowLogger):
                    self._publish_mlflow(lg, final, files, best, step=trainer.global_step)
                elif isinstance(lg, WandbLogger):
                    self._publish_wandb(lg, final, files)
            except Exception as e:  # the tracker's copy is a convenience: the run folder holds everything
                log.error(
                    "could not publish %s to %s: %s: %s", self.run_dir, type(lg).__name__, type(e).__name__, e
                )

    def _publish_mlflow(self, lg, final: dict, files: list[Path], best: str | None, *, step: int) -> None:
        import time

        from mlflow.entities import Metric

        client, run_id = lg.experiment, lg.run_id
        if final:  # the run is marked finished by now; MLflow still takes metrics and artifacts for it
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in final.items()])
        for f in files:
            parent = f.relative_to(self.run_dir).parent.as_posix()
            client.log_artifact(run_id, str(f), None if parent == "." else parent)
        if best:
            client.log_artifact(run_id, str(best), "checkpoints")
        log.info(
            "published %d files and %s to MLflow run %s (%s)", len(files), best, run_id, lg._tracking_uri
        )

    def _publish_wandb(self, lg, final: dict, files: list[Path]) -> None:
        run = lg.experiment
        if final:
            run.summary.update(final)
        for f in files:
            if f == self.run_dir / "config.yaml":  # W&B's own files/config.yaml is the run's config
                continue
            run.save(str(f), base_path=str(self.run_dir), policy="now")
        log.info("published %d files to W&B run %s in %s", len(files), run.id, run.dir)
        run.finish()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # v == v: not NaN


def publish_run(trainer: pl.Trainer, result: dict) -> None:
    """Hand a finished run (its final evaluation written) to its :class:`TrackRun` callbacks."""
    for cb in trainer.callbacks:
        if isinstance(cb, TrackRun):
            cb.publish(trainer, result)
