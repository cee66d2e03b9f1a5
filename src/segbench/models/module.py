"""The LightningModule that fine-tunes a torchvision Mask R-CNN and validates it with ``segbench.eval``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from segbench.eval.metrics import Evaluator
from segbench.models.segmenter import predict_instances
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

SCHEDULERS = ("cosine", "multistep", "constant")


class WarmupSchedule:
    """LR multiplier per step: linear warm-up, then cosine decay, step decay or constant.

    A plain object (not a closure), so that its state goes into checkpoints and resumes exactly.

    ``by_time``: the decay also follows the training wall-clock budget (``trainer.max_time``): its progress
    is the larger of the step fraction and :attr:`time_fraction`, which the module sets before every step
    from Lightning's ``Timer``. With a time budget and more epochs than fit in it, the decay ends when the
    time does, whatever the speed of the machine (the run is then no longer reproducible step for step).
    """

    def __init__(
        self,
        *,
        total_steps: int,
        name: str = "cosine",
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
        min_lr_ratio: float = 0.0,
        milestones: tuple[float, ...] = (0.7, 0.9),
        gamma: float = 0.1,
        by_time: bool = False,
    ) -> None:
        if name not in SCHEDULERS:
            raise SegbenchError(f"model.scheduler.name={name!r} is not one of {SCHEDULERS}")
        self.total_steps = max(int(total_steps), 1)
        self.name = name
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.min_lr_ratio = float(min_lr_ratio)
        self.milestones = [int(m * self.total_steps) if m < 1 else int(m) for m in milestones]
        self.gamma = float(gamma)
        self.by_time = bool(by_time)
        self.time_fraction = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            a = step / max(self.warmup_steps, 1)
            warm = self.warmup_factor * (1 - a) + a
        else:
            warm = 1.0
        if self.name == "cosine":
            t = min(max(step - self.warmup_steps, 0) / max(self.total_steps - self.warmup_steps, 1), 1.0)
            if self.by_time:
                t = min(max(t, self.time_fraction), 1.0)
            decay = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        elif self.name == "multistep":
            done = [step >= m for m in self.milestones]
            if self.by_time:
                frac = self.time_fraction * self.total_steps
                done = [d or frac >= m for d, m in zip(done, self.milestones, strict=True)]
            decay = self.gamma ** sum(done)
        else:
            decay = 1.0
        return warm * decay


class MaskRCNNModule(pl.LightningModule):
    """Fine-tunes a Mask R-CNN built by :func:`segbench.models.maskrcnn.build_maskrcnn`.

    Parameters
    ----------
    net : dict
        Keyword arguments of ``build_maskrcnn`` (backbone, weights, sizes, RoI sampling...), without
        ``num_classes``.
    num_classes : int
        Foreground classes (from the dataset).
    class_names : list of str
    categories : list of dict
        The dataset's COCO categories (original ids), so results can be written with them.
    label_to_cat_id : dict
        Contiguous label -> COCO category id.
    optimizer : callable
        ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_``), e.g. SGD or AdamW.
    scheduler : dict
        :class:`WarmupSchedule` options (name, warmup_steps, min_lr_ratio, milestones, gamma, by_time).
    eval_max_dets : int, optional
        COCO detections-per-image cap in validation (``None``: keep all).
    eval_score_threshold : float
        Score above which detections count for F1 / PQ / foreground IoU.
    on_nonfinite_loss : {"raise", "skip"}
        What a NaN or infinite loss does: stop with a message naming the step and term, or skip the batch.
    channels_last : bool
        Keep the network's weights (hence its feature maps) in the ``channels_last`` memory format while
        training. On CPUs with oneDNN this makes convolutions faster, most with ``trainer.precision=
        bf16-mixed`` (measured in ``benchmarks/bench_cpu_formats.py``); checkpoints are ordinary ones.
    """

    def __init__(
        self,
        *,
        net: dict,
        num_classes: int,
        class_names: list[str],
        categories: list[dict],
        label_to_cat_id: dict[int, int],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: dict | None = None,
        mask_threshold: float = 0.5,
        eval_max_dets: int | None = None,
        eval_score_threshold: float = 0.5,
        on_nonfinite_loss: str = "raise",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        from segbench.models.maskrcnn import build_maskrcnn

        if on_nonfinite_loss not in ("raise", "skip"):
            raise SegbenchError(
                f"model.on_nonfinite_loss must be 'raise' or 'skip', got {on_nonfinite_loss!r}"
            )
        self.net_kwargs = {k: v for k, v in dict(net).items() if k != "num_classes"}
        self.num_classes = int(num_classes)
        self.class_names = list(class_names)
        self.categories = [dict(c) for c in categories]
        self.label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
        self.model = build_maskrcnn(num_classes=self.num_classes, **self.net_kwargs)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer_factory = optimizer or (lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
        self.scheduler_cfg = dict(scheduler or {})
        self.mask_threshold = mask_threshold
        self.eval_max_dets = eval_max_dets
        self.eval_score_threshold = eval_score_threshold
        self.on_nonfinite_loss = on_nonfinite_loss
        self.evaluator: Evaluator | None = None
        self.last_val_metrics: dict | None = None
        self.history: list[dict] = []
        self.skipped_batches = 0
        self._fit_t0: float | None = None

    def forward(self, images, targets=None):
        return self.model(images, targets)

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        images, targets = batch
        targets = [{k: v for k, v in t.items() if k != "image_id"} for t in targets]
        losses = self.model(list(images), targets)
        total = sum(losses.values())
        bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        if bad or not torch.isfinite(total):
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
            terms = ", ".join(f"{k}={losses[k].item()}" for k in bad) or f"loss={total.item()}"
            if self.on_nonfinite_loss == "skip":
                self.skipped_batches += 1
                log.warning(
                    "non-finite loss at %s: %s; batch skipped (model.on_nonfinite_loss=skip)", where, terms
                )
                return None
            raise SegbenchError(
                f"non-finite loss at {where}: {terms}. Lower the learning rate (model.optimizer.lr), enable "
                "gradient clipping (trainer.gradient_clip_val), check the data (`segbench data check`), or set "
                "model.on_nonfinite_loss=skip to skip such batches."
            )
        bs = len(images)
        for k, v in losses.items():
            self.log(f"train/{k}", v.detach(), batch_size=bs, on_step=True, on_epoch=False)
        self.log("train/loss", total.detach(), batch_size=bs, prog_bar=True, on_step=True, on_epoch=False)
        opt = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
        if opt is not None:
            self.log("train/lr", opt.param_groups[0]["lr"], batch_size=bs, prog_bar=True, on_step=True)
        return total

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        if not math.isfinite(total):
            total = 10_000
        schedule = WarmupSchedule(total_steps=int(total), **self.scheduler_cfg)
        if schedule.by_time and self._timer() is None:
            raise SegbenchError(
                "model.scheduler.by_time=true decays the learning rate over the time budget, but "
                "trainer.max_time is not set; set trainer.max_time (e.g. '00:00:14:00') or by_time=false"
            )
        self._schedule = schedule
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_fit_start(self) -> None:
        self._fit_t0 = time.perf_counter()

    def _timer(self) -> pl.callbacks.Timer | None:
        trainer = self._trainer
        if trainer is None:
            return None
        return next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.Timer)), None)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        schedule = getattr(self, "_schedule", None)
        if schedule is not None and schedule.by_time:
            timer = self._timer()
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
            if remaining is not None and elapsed + remaining > 0:
                schedule.time_fraction = float(elapsed / (elapsed + remaining))

    def _train_wall_seconds(self) -> float | None:
        """Wall time of the training loop so far (validation included), across resumes when a
        ``Timer`` callback runs (``trainer.max_time`` adds one); else since this process began fitting."""
        timer = self._timer()
        if timer is not None:
            elapsed = timer.time_elapsed("train")
            if elapsed:
                return float(elapsed)
        return None if self._fit_t0 is None else time.perf_counter() - self._fit_t0

    # -- validation -------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.evaluator = Evaluator(
            self.categories,
            label_to_cat_id=self.label_to_cat_id,
            max_dets=self.eval_max_dets,
            score_threshold=self.eval_score_threshold,
            iou_types=("segm", "bbox"),  # boundary AP in the final evaluation only: it costs time
        )

    def validation_step(self, batch, batch_idx):
        images, metas = batch
        preds = predict_instances(self.model, list(images), mask_threshold=self.mask_threshold)
        for pred, meta in zip(preds, metas, strict=True):
            self.evaluator.update(meta["gt"], pred, image_id=meta["image_id"], file_name=meta["file_name"])

    def _gather_evaluator(self) -> Evaluator:
        ev = self.evaluator
        if (
            self.trainer.world_size > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            parts: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, ev.state())
            ev = Evaluator.from_states(
                parts,
                categories=self.categories,
                label_to_cat_id=self.label_to_cat_id,
                max_dets=self.eval_max_dets,
                score_threshold=self.eval_score_threshold,
            )
        return ev

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None or len(self.evaluator) == 0:
            return
        m = self._gather_evaluator().compute()
        self.last_val_metrics = m

        def val(x):
            return -1.0 if x is None else float(x)

        logged = {
            "val/segm_mAP": val(m.get("segm_AP")),
            "val/bbox_mAP": val(m.get("bbox_AP")),
            "val/segm_AP50": val(m.get("segm_AP50")),
            "val/segm_AP75": val(m.get("segm_AP75")),
            "val/bbox_AP50": val(m.get("bbox_AP50")),
            "val/bbox_AP75": val(m.get("bbox_AP75")),
            "val/f1": val(m.get("f1")),
            "val/pq": val(m.get("pq")),
        }
        for name, ap in (m.get("per_class_segm_AP") or {}).items():
            logged[f"val/segm_AP/{name}"] = val(ap)
        for k, v in logged.items():
            self.log(
                k, v, prog_bar=k in ("val/segm_mAP", "val/bbox_mAP"), sync_dist=False, rank_zero_only=False
            )
        if not self.trainer.sanity_checking:
            wall = self._train_wall_seconds()
            entry = {"epoch": self.current_epoch, "step": self.global_step}
            if wall is not None:
                entry["wall_s"] = round(wall, 1)
            self.history.append({**entry, **logged})

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["segbench"] = {
            "format": 1,
            "net": {k: v for k, v in self.net_kwargs.items()},
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "categories": self.categories,
            "label_to_cat_id": self.label_to_cat_id,
            "mask_threshold": self.mask_threshold,
            "history": self.history,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("segbench") or {}
        self.history = list(meta.get("history", []))
