"""Torch models: the Mask R-CNN builder and its safe weights loader."""

from __future__ import annotations

from segbench.models.maskrcnn import (
    BACKBONES,
    COCO_NUM_CLASSES,
    NORM_LAYERS,
    PRETRAINED_WEIGHTS,
    build_maskrcnn,
    count_classes_in_state_dict,
    load_weights_file,
)

__all__ = [
    "BACKBONES",
    "COCO_NUM_CLASSES",
    "NORM_LAYERS",
    "PRETRAINED_WEIGHTS",
    "build_maskrcnn",
    "count_classes_in_state_dict",
    "load_weights_file",
]
