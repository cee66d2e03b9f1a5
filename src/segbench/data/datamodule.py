"""Torch datasets, albumentations transforms and the LightningDataModule over the COCO data layer.

Training items follow torchvision's detection contract: an image ``FloatTensor[3, H, W]`` in 0..1 and a
target dict with ``boxes`` (``FloatTensor[N, 4]``, x1y1x2y2), ``labels`` (``Int64Tensor[N]``, 1..K) and
``masks`` (``UInt8Tensor[N, H, W]``). Crowd regions are never targets. Augmentations transform the image
and the masks together; boxes are recomputed from the transformed masks and instances cropped away (less
than ``min_area`` pixels left) are dropped, so masks, boxes and labels cannot drift apart.

Large images can be pre-cropped (``max_crop``) *before* their masks are decoded: each mask is decoded and
cropped one at a time, so an image with hundreds of objects never holds hundreds of full-size masks.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset

from segbench.data.coco import CocoDataset, open_split
from segbench.types import SegbenchError, masks_to_boxes

log = logging.getLogger(__name__)


def build_transforms(specs: Sequence[Any] | None):
    """An ``albumentations.Compose`` of instantiated albumentations transforms (Hydra instantiates the
    ``data.train_transforms`` entries before they get here)."""
    import albumentations as A

    if not specs:
        return None
    for k, s in enumerate(specs):
        if not isinstance(s, A.BasicTransform | A.BaseCompose):
            raise SegbenchError(
                f"data.train_transforms[{k}] is a {type(s).__name__}, not an albumentations transform; each "
                "entry needs a _target_ such as albumentations.HorizontalFlip"
            )
    return A.Compose(list(specs))


def _random_window(h: int, w: int, size: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    ch, cw = min(h, size), min(w, size)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw


def _exit_on_parents_sigterm(parent: int) -> None:
    """In a worker thread: wait for SIGTERM (blocked in every thread) and exit when the parent sent it."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)


def init_worker(worker_id: int, rank: int = 0) -> None:
    """A DataLoader worker's start: it ignores a SIGTERM that its parent did not send, and is seeded as
    Lightning seeds workers.

    A scheduler preempting a job (SLURM, Kubernetes) sends SIGTERM to every process of the job, the loader's
    workers too: a worker that died of it would make the next batch fail ("DataLoader worker is killed by
    signal") before the main process's handler (:class:`segbench.callbacks.CheckpointOnSigterm`) saves the
    current step; ignoring it leaves the stop to the main process, which shuts its workers down. But the
    parent's own SIGTERM must still end the worker: at interpreter exit ``multiprocessing`` terminates its
    daemonic children and then joins them, so a worker deaf to it would hang the exit forever (a loader
    whose iterator was never shut down). Python's handlers do not see the sender, so SIGTERM is blocked and a
    thread reads it with ``sigwaitinfo`` (Linux); elsewhere it is ignored as before. Setting a
    ``worker_init_fn`` turns off Lightning's own worker seeding (``seed_everything(workers=True)``), so
    this calls it.
    """
    if hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(
            target=_exit_on_parents_sigterm, args=(os.getppid(),), name="segbench-sigterm", daemon=True
        ).start()
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)


class TrainDataset(Dataset):
    """Training items ``(image FloatTensor[3,H,W], target)``; crowd regions excluded.

    Parameters
    ----------
    coco : CocoDataset
    transforms : albumentations.Compose, optional
    max_crop : int, optional
        Random crop of at most this size taken before decoding masks (for large images).
    min_area : int
        Instances with fewer pixels after augmentation are dropped.
    copy_paste : float
        Probability that an item gets instances pasted from another train image
        (:func:`segbench.data.aids.paste_instances`), before the augmentations.
    copy_paste_objects : int, optional
        At most this many pasted per item (``None``: 1 to all of the source's, at random).
    sources : sequence of int, optional
        The images objects may be pasted from (a subset's own images); ``None``: all.
    """

    def __init__(
        self,
        coco: CocoDataset,
        transforms=None,
        *,
        max_crop: int | None = None,
        min_area: int = 4,
        copy_paste: float = 0.0,
        copy_paste_objects: int | None = None,
        sources: Sequence[int] | None = None,
    ):
        self.coco = coco
        self.transforms = transforms
        self.max_crop = max_crop
        self.min_area = min_area
        self.copy_paste = float(copy_paste)
        self.copy_paste_objects = copy_paste_objects
        self.sources = list(range(len(coco))) if sources is None else [int(i) for i in sources]

    def __len__(self) -> int:
        return len(self.coco)

    def _masks(self, i: int, window: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        inst = self.coco.load_instances(i)
        keep = ~inst.iscrowd
        rles = [r for r, k in zip(inst.rles or [], keep, strict=True) if k]
        labels = inst.labels[keep]
        h, w = inst.image_size
        if window is None:
            masks = mask_utils.decode(rles).transpose(2, 0, 1) if rles else np.zeros((0, h, w), np.uint8)
            return np.ascontiguousarray(masks), labels
        y0, x0, ch, cw = window
        out = np.zeros((len(rles), ch, cw), np.uint8)
        for k, r in enumerate(rles):  # one full-size mask at a time
            out[k] = mask_utils.decode(r)[y0 : y0 + ch, x0 : x0 + cw]
        return out, labels

    def _paste(self, i: int, image, masks, labels, rng: np.random.Generator):
        from segbench.data.aids import paste_instances

        if rng.random() >= self.copy_paste:
            return image, masks, labels
        others = [j for j in self.sources if j != i]
        j = others[int(rng.integers(len(others)))]
        src = self.coco.load_image(j)
        hs, ws = src.shape[:2]
        h, w = image.shape[:2]
        # only the window that can land on the image is decoded (the crop rule of _masks)
        y0, x0 = int(rng.integers(0, max(hs - h, 0) + 1)), int(rng.integers(0, max(ws - w, 0) + 1))
        window = (y0, x0, min(h, hs), min(w, ws))
        src_masks, src_labels = self._masks(j, window)
        src = src[y0 : y0 + window[2], x0 : x0 + window[3]]
        return paste_instances(
            image, masks, labels, src, src_masks, src_labels, rng, max_objects=self.copy_paste_objects
        )

    def __getitem__(self, i: int):
        # One seed per item drawn from torch's generator: augmentations follow seed_everything, differ
        # between DataLoader workers, and replay exactly after a resume.
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        image = self.coco.load_image(i)
        h, w = image.shape[:2]
        window = None
        if self.max_crop and (h > self.max_crop or w > self.max_crop):
            window = _random_window(h, w, self.max_crop, np.random.default_rng(seed))
            y0, x0, ch, cw = window
            image = image[y0 : y0 + ch, x0 : x0 + cw]
        masks, labels = self._masks(i, window)
        if self.copy_paste > 0 and len(self.sources) > 1:
            image, masks, labels = self._paste(i, image, masks, labels, np.random.default_rng([seed, 1]))
        if self.transforms is not None:
            self.transforms.set_random_seed(seed)
            out = self.transforms(image=image, masks=masks) if len(masks) else self.transforms(image=image)
            image = out["image"]
            masks = (
                np.asarray(out["masks"], np.uint8)
                if len(masks)
                else np.zeros((0, *image.shape[:2]), np.uint8)
            )
        if len(masks):
            area = masks.reshape(len(masks), -1).sum(axis=1)
            keep = area >= self.min_area
            masks, labels = masks[keep], labels[keep]
        boxes = masks_to_boxes(masks.astype(bool))
        if len(boxes):  # torchvision needs positive width and height
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            masks, labels, boxes = masks[ok], labels[ok], boxes[ok]
        img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        target = {
            "boxes": torch.from_numpy(boxes).float().reshape(-1, 4),
            "labels": torch.from_numpy(np.asarray(labels, np.int64)),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "image_id": int(self.coco.images[i]["id"]),
        }
        return img_t, target


class EvalDataset(Dataset):
    """Evaluation items ``(image FloatTensor[3,H,W], meta)`` at the original size; ``meta`` holds the
    ``image_id``, ``file_name``, dataset ``index`` and the ground truth ``gt`` (:class:`Instances` with RLE
    masks, crowd regions included)."""

    def __init__(self, coco: CocoDataset):
        self.coco = coco

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, i: int):
        image = self.coco.load_image(i)
        im = self.coco.images[i]
        meta = {
            "index": i,
            "image_id": im["id"],
            "file_name": im["file_name"],
            "gt": self.coco.load_instances(i),
        }
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255), meta


def collate(batch):
    """Detection collate: a tuple of images and a tuple of targets (images keep their own sizes)."""
    return tuple(zip(*batch, strict=True))


class CocoDataModule(pl.LightningDataModule):
    """Train / val data of a COCO dataset for Mask R-CNN.

    Parameters
    ----------
    root : str, optional
        Dataset folder (``images/``, ``annotations/instances_<split>.json``).
    train_split, val_split : str
    train_ann, val_ann, image_root : str, optional
        Explicit JSON files / image folder instead of the root layout.
    batch_size : int
        Training images per step (validation uses ``val_batch_size``).
    num_workers : int
        DataLoader worker processes (0 loads in the main process).
    persistent_workers, pin_memory : bool
    train_transforms : list
        albumentations transforms (Hydra configs or objects) applied to training images and masks.
    max_crop : int, optional
        Pre-crop large training images to at most this size before decoding masks.
    min_area : int
        Instances smaller than this after augmentation are dropped.
    limit_train, limit_val : int, optional
        Use only the first N images (smoke tests, quick runs).
    keep_empty_classes : bool
        Train categories that no annotation of the train split uses as classes too (default: they keep
        their ids but are no classes, with a log line). The val split always uses the train split's
        classes (the same labels for the same category ids).
    train_indices : sequence of int, optional
        Train on these images of the train split only (positions in its JSON, e.g. a subset drawn by
        ``segbench advise``); ``limit_train`` then applies to the subset.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        train_ann: str | None = None,
        val_ann: str | None = None,
        image_root: str | None = None,
        batch_size: int = 4,
        val_batch_size: int = 2,
        num_workers: int = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        train_transforms: Sequence[Any] | None = None,
        max_crop: int | None = None,
        min_area: int = 4,
        limit_train: int | None = None,
        limit_val: int | None = None,
        train_indices: Sequence[int] | None = None,
        keep_empty_classes: bool = False,
        copy_paste: float = 0.0,
        copy_paste_objects: int | None = None,
        repeat_factor_threshold: float | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not isinstance(v, int) or v < 1:
                raise SegbenchError(f"data.{name} must be a positive integer, got {v!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise SegbenchError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        if persistent_workers and num_workers == 0:
            raise SegbenchError(
                "data.persistent_workers=true needs data.num_workers > 0; set one or the other"
            )
        if (
            not isinstance(copy_paste, int | float)
            or isinstance(copy_paste, bool)
            or not 0 <= copy_paste <= 1
        ):
            raise SegbenchError(f"data.copy_paste is a probability in 0..1, got {copy_paste!r}")
        if copy_paste_objects is not None and (
            not isinstance(copy_paste_objects, int) or copy_paste_objects < 1
        ):
            raise SegbenchError(
                f"data.copy_paste_objects must be a positive integer or null, got {copy_paste_objects!r}"
            )
        if repeat_factor_threshold is not None and (
            not isinstance(repeat_factor_threshold, int | float) or not repeat_factor_threshold > 0
        ):
            raise SegbenchError(
                "data.repeat_factor_threshold must be a number > 0 (LVIS used 0.001) or null, got "
                f"{repeat_factor_threshold!r}"
            )
        cpus = os.cpu_count() or 1
        if num_workers > cpus:
            log.warning(
                "data.num_workers=%d is more than the %d CPU cores of this machine", num_workers, cpus
            )
        self.root = root
        self.train_split, self.val_split = train_split, val_split
        self.train_ann, self.val_ann, self.image_root = train_ann, val_ann, image_root
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.pin_memory = pin_memory
        self.train_transform_specs = list(train_transforms or [])
        self.max_crop = max_crop
        self.min_area = min_area
        self.limit_train, self.limit_val = limit_train, limit_val
        self.keep_empty_classes = bool(keep_empty_classes)
        self.copy_paste, self.copy_paste_objects = float(copy_paste), copy_paste_objects
        self.repeat_factor_threshold = repeat_factor_threshold
        self.train_indices = None if train_indices is None else [int(i) for i in train_indices]
        self.train_coco: CocoDataset | None = None
        self.val_coco: CocoDataset | None = None

    # -- datasets ---------------------------------------------------------------------------------
    def _open(self, split: str, ann: str | None, classes: CocoDataset | None = None) -> CocoDataset:
        # missing image files stop the run here, before a model is built (a stat per image)
        return open_split(
            self.root,
            split,
            ann_file=ann,
            image_root=self.image_root,
            check_files=True,
            keep_empty_classes=self.keep_empty_classes,
            classes=classes.categories if classes is not None else None,
            classes_source=classes.ann_file if classes is not None else "the training split",
        )

    def prepare_data(self) -> None:  # nothing to download
        pass

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_coco is None:
            self.train_coco = self._open(self.train_split, self.train_ann)
            if len(self.train_coco) == 0:
                raise SegbenchError(f"{self.train_coco.ann_file} has no images to train on")
        if stage in (None, "fit", "validate", "test") and self.val_coco is None:
            # the train split's classes: a val split without an object of some class still has it
            self.val_coco = self._open(self.val_split, self.val_ann, classes=self.train_coco)

    @property
    def reference(self) -> CocoDataset:
        """The split that defines the classes (train when open, else val)."""
        ds = self.train_coco or self.val_coco
        if ds is None:
            self.setup("fit")
            ds = self.train_coco
        return ds

    @property
    def num_classes(self) -> int:
        return self.reference.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.reference.class_names

    @property
    def categories(self) -> list[dict]:
        return self.reference.categories

    def _subset(self, ds: Dataset, limit: int | None) -> Dataset:
        if limit is None or limit >= len(ds):
            return ds
        return torch.utils.data.Subset(ds, list(range(limit)))

    def train_dataset(self) -> Dataset:
        self.setup("fit")
        tfm = build_transforms(self.train_transform_specs)
        ds = TrainDataset(
            self.train_coco,
            tfm,
            max_crop=self.max_crop,
            min_area=self.min_area,
            copy_paste=self.copy_paste,
            copy_paste_objects=self.copy_paste_objects,
            sources=self._train_positions(),
        )
        if self.train_indices is not None:
            bad = [i for i in self.train_indices if not 0 <= i < len(ds)]
            if bad or not self.train_indices:
                raise SegbenchError(
                    f"train_indices must be a non-empty list of positions in the {len(ds)} images of "
                    f"{self.train_coco.ann_file}, got {len(self.train_indices)} with {bad[:5]} out of range"
                )
            ds = torch.utils.data.Subset(ds, self.train_indices)
        return self._subset(ds, self.limit_train)

    def _train_positions(self) -> list[int]:
        """The positions in the train split that training reads (``train_indices``, then ``limit_train``)."""
        pos = list(range(len(self.train_coco))) if self.train_indices is None else list(self.train_indices)
        return pos if self.limit_train is None else pos[: self.limit_train]

    def _repeat_sampler(self):
        from segbench.data.aids import RepeatFactorSampler, repeat_factors

        ds = self.train_coco
        classes = [
            [a["category_id"] for a in ds.annotations(i) if not a.get("iscrowd")]
            for i in self._train_positions()
        ]
        factors = repeat_factors(classes, self.repeat_factor_threshold)
        if not (
            factors > 1
        ).any():  # no class is rarer than t: the plain shuffle, so the run equals one without
            log.info(
                "repeat-factor sampling (t=%g): every class is in at least that share of the %d train images; "
                "no image is repeated, the plain shuffle is kept",
                self.repeat_factor_threshold,
                len(factors),
            )
            return None
        log.info(
            "repeat-factor sampling (t=%g): %d of %d train images repeated, %.0f draws an epoch",
            self.repeat_factor_threshold,
            int((factors > 1).sum()),
            len(factors),
            factors.sum(),
        )
        return RepeatFactorSampler(factors, seed=torch.initial_seed() % (2**31))

    def val_dataset(self) -> Dataset:
        self.setup("validate")
        return self._subset(EvalDataset(self.val_coco), self.limit_val)

    def _loader(self, ds: Dataset, *, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            worker_init_fn=functools.partial(init_worker, rank=rank) if self.num_workers > 0 else None,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        sampler = self._repeat_sampler() if self.repeat_factor_threshold is not None else None
        return self._loader(ds, batch_size=self.batch_size, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset(), batch_size=self.val_batch_size, shuffle=False)
