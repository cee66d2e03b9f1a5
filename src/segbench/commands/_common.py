"""What several commands read from their config the same way."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from segbench.data.coco import CocoDataset, resolve_split, split_class_categories
from segbench.types import SegbenchError

log = logging.getLogger(__name__)


def open_data_split(data: DictConfig, split: str) -> CocoDataset:
    """Open one split named by a ``data`` config (the layout of ``data.root``, or explicit
    ``<split>_ann`` / ``image_root``), with the training split's classes.

    Categories that no annotation uses are no classes (unless ``data.keep_empty_classes``); which ones
    those are is decided on the training split (``data.train_split``), as ``segbench train`` does, so a
    val split without an object of some class still has that class and the labels and category ids are
    the model's. Without a training split (only ``data.<split>_ann`` given), the split decides itself."""
    keep = bool(data.get("keep_empty_classes", False))
    ann, images = resolve_split(data.get("root"), split, **data_source(data, split))
    classes = train_ann = None
    train_split = data.get("train_split") or "train"
    if split != train_split:
        try:
            train_ann, _ = resolve_split(data.get("root"), train_split, **data_source(data, train_split))
        except SegbenchError as e:
            log.info("%s decides its own classes (no training split: %s)", ann.name, e)
        if train_ann is not None and train_ann.resolve() != ann.resolve():
            classes = split_class_categories(train_ann, keep_empty_classes=keep)
    opts = {"root": data.get("root"), "keep_empty_classes": keep}
    if classes is not None:
        try:
            return CocoDataset(ann, images, classes=classes, classes_source=train_ann, **opts)
        except SegbenchError as e:  # other categories than the training split's: the split's own, and
            log.warning("%s", e)  # the model's class check (eval, compare) says what differs
    return CocoDataset(ann, images, **opts)


def data_source(data: DictConfig, split: str) -> dict:
    """The keyword arguments that name one split of a ``data`` config."""
    return {"ann_file": data.get(f"{split}_ann"), "image_root": data.get("image_root")}
