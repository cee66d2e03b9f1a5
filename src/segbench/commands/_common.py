"""What several commands read from their config the same way."""

from __future__ import annotations

from omegaconf import DictConfig

from segbench.data.coco import CocoDataset, open_split


def open_data_split(data: DictConfig, split: str) -> CocoDataset:
    """Open one split named by a ``data`` config (root layout, or explicit ``<split>_ann`` / ``image_root``)."""
    return open_split(
        data.get("root"), split, ann_file=data.get(f"{split}_ann"), image_root=data.get("image_root")
    )


def data_source(data: DictConfig, split: str) -> dict:
    """The keyword arguments that name one split of a ``data`` config."""
    return {"ann_file": data.get(f"{split}_ann"), "image_root": data.get("image_root")}
