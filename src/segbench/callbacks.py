"""Lightning plugins and callbacks of segbench's training: atomic checkpoint files, a checkpoint when
SIGTERM stops the run, random-generator state.

Which checkpoints are kept is Lightning's own ``ModelCheckpoint`` (``configs/callbacks/default.yaml``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
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
