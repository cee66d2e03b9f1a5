"""Lightning plugins and callbacks of segbench's training: atomic checkpoint files, random-generator state.

Which checkpoints are kept is Lightning's own ``ModelCheckpoint`` (``configs/callbacks/default.yaml``).
"""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.plugins import TorchCheckpointIO

from segbench.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose files appear whole or not at all.

    The checkpoint is written to ``<name>.tmp`` and renamed into place (:func:`segbench.io.atomic_path`),
    so a process killed while saving leaves the previous checkpoint intact. Plugged in through the
    Trainer's public ``plugins=`` (``configs/trainer/default.yaml``) instead of overriding
    ``ModelCheckpoint`` internals.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options=storage_options)


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
