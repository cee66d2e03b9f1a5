"""Torch models: the Mask R-CNN builder (:mod:`.maskrcnn`), the one checkpoint path (:mod:`.checkpoint`),
torchvision patches (:mod:`.transforms`), the LightningModule (:mod:`.module`) and the segmenter."""

from __future__ import annotations

from segbench.models.maskrcnn import (
    BACKBONES,
    COCO_NUM_CLASSES,
    NORM_LAYERS,
    PRETRAINED_WEIGHTS,
    build_maskrcnn,
    count_classes_in_state_dict,
)

__all__ = [
    "BACKBONES",
    "COCO_NUM_CLASSES",
    "NORM_LAYERS",
    "PRETRAINED_WEIGHTS",
    "build_maskrcnn",
    "count_classes_in_state_dict",
]
