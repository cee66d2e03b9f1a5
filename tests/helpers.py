"""Callbacks used by tests through Hydra overrides (``+callbacks.x._target_=tests.helpers.X``), and shared
run arguments."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """SIGKILLs the training process right after global step ``step`` (a crash mid-epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def interruptible_run_args(synth_root: Path) -> list[str]:
    """A deterministic 3-epoch x 3-step tiny run: the reference that an interrupted and resumed run must equal
    (SIGKILL in test_crash_safety, SIGTERM in test_faults)."""
    return [
        "debug=tiny",
        f"data.root={synth_root}",
        "model.net.min_size=64",
        "model.net.max_size=64",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=3",
        "trainer.deterministic=true",
        "data.limit_val=4",
        "seed=7",
        "test_after_fit=false",
    ]


def untrained_checkpoint(root: Path, path: Path, *, size: int, detections: int) -> Path:
    """An untrained ResNet-18 Mask R-CNN for the classes of ``root``'s train split at ``size`` px, written
    by the training's own checkpoint writer to ``path``."""
    import torch

    from segbench.data.coco import open_split
    from segbench.models.module import MaskRCNNModule
    from segbench.training import save_checkpoint

    ds = open_split(root, "train")
    torch.manual_seed(0)
    net = {
        "backbone": "resnet18_fpn",
        "weights": None,
        "min_size": size,
        "max_size": size,
        "box_detections_per_img": detections,
    }
    module = MaskRCNNModule(
        net=net,
        num_classes=ds.num_classes,
        class_names=ds.class_names,
        categories=ds.categories,
        label_to_cat_id=ds.label_to_cat_id,
    )
    return save_checkpoint(module, path)
