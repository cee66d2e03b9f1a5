"""Build torchvision Mask R-CNN models: backbone choice, pretrained or local weights, head replacement.

The returned model is a plain :class:`torchvision.models.detection.MaskRCNN`, so it follows
torchvision's data contract exactly:

* input: a list of ``FloatTensor[3, H, W]`` images with values in ``[0, 1]`` (sizes may differ);
* training targets: one dict per image with ``boxes`` (``FloatTensor[N, 4]``, ``x1, y1, x2, y2``
  in pixels, ``0 <= x1 < x2 <= W``, ``0 <= y1 < y2 <= H``), ``labels`` (``Int64Tensor[N]``, ``1..num_classes``;
  ``0`` is the background) and ``masks`` (``UInt8Tensor[N, H, W]``); ``N`` may be ``0``;
* training output: a dict of scalar losses (``loss_classifier``, ``loss_box_reg``, ``loss_mask``,
  ``loss_objectness``, ``loss_rpn_box_reg``);
* eval output: one dict per image with ``boxes`` (``FloatTensor[N, 4]`` x1y1x2y2), ``labels``
  (``Int64Tensor[N]``), ``scores`` (``Tensor[N]``) and ``masks`` (``FloatTensor[N, 1, H, W]``
  probabilities; threshold at 0.5 for binary masks).

Weights come from torchvision (``"coco"``, ``"imagenet"``; downloaded and cached by ``torch.hub``), from
a local file (a state_dict or a segbench/Lightning checkpoint, always loaded with ``weights_only=True``),
or nowhere (``None``: trained from scratch).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    mobilenet_v3_large,
    resnet18,
    resnet34,
    resnet50,
)
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import (
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from segbench.models.checkpoint import read_weights
from segbench.models.roi_pool import fast_roi_pools
from segbench.models.transforms import NativeSizeTransform, float32_boxes
from segbench.options import check_int
from segbench.types import SegbenchError

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "COCO_NUM_CLASSES",
    "NORM_LAYERS",
    "PRETRAINED_WEIGHTS",
    "build_maskrcnn",
    "count_classes_in_state_dict",
]

#: Backbone names accepted by :func:`build_maskrcnn`.
BACKBONES: tuple[str, ...] = (
    "resnet50_fpn",
    "resnet50_fpn_v2",
    "resnet18_fpn",
    "resnet34_fpn",
    "mobilenet_v3_large_fpn",
)
#: Named weights accepted by :func:`build_maskrcnn` (besides ``None`` and a local file path).
PRETRAINED_WEIGHTS: tuple[str, ...] = ("coco", "imagenet")
#: Backbone normalisation layers accepted by :func:`build_maskrcnn`.
NORM_LAYERS: tuple[str, ...] = ("batchnorm", "groupnorm", "frozen_batchnorm")
#: Foreground classes of torchvision's COCO detection weights (91 outputs with background; some unused).
COCO_NUM_CLASSES = 90

_COCO_WEIGHTS: dict[str, WeightsEnum] = {
    "resnet50_fpn": MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    "resnet50_fpn_v2": MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
}
_IMAGENET_WEIGHTS: dict[str, WeightsEnum] = {
    "resnet50_fpn": ResNet50_Weights.IMAGENET1K_V1,
    "resnet50_fpn_v2": ResNet50_Weights.IMAGENET1K_V1,
    "resnet18_fpn": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34_fpn": ResNet34_Weights.IMAGENET1K_V1,
    "mobilenet_v3_large_fpn": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
}
_RESNETS: dict[str, Callable[..., nn.Module]] = {
    "resnet50_fpn": resnet50,
    "resnet50_fpn_v2": resnet50,
    "resnet18_fpn": resnet18,
    "resnet34_fpn": resnet34,
}
# Trainable backbone layers: (maximum = everything trainable, default when pretrained), as in torchvision.
_TRAINABLE_LAYERS: dict[str, tuple[int, int]] = {
    "mobilenet_v3_large_fpn": (6, 3),
    **{name: (5, 3) for name in _RESNETS},
}
# Number of feature maps the FPN hands to the RPN (ResNet: 4 levels + max-pool; MobileNetV3: 2 + max-pool).
_NUM_FEATURE_MAPS: dict[str, int] = {"mobilenet_v3_large_fpn": 3, **{name: 5 for name in _RESNETS}}
_DEFAULT_ANCHOR_SIZES: tuple[int, ...] = (32, 64, 128, 256, 512)
_ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)

_CLS_SCORE_WEIGHT = "roi_heads.box_predictor.cls_score.weight"
# The class-dependent layers; everything else (incl. mask_predictor.conv5_mask) is class-agnostic.
_CLASS_HEAD_PREFIXES: tuple[str, ...] = (
    "roi_heads.box_predictor.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar", ".pkl", ".pickle")


# --------------------------------------------------------------------------------------------------
# Loading files
# --------------------------------------------------------------------------------------------------


def count_classes_in_state_dict(state_dict: Mapping[str, Tensor]) -> int:
    """Number of foreground classes a Mask R-CNN state_dict was trained for.

    Parameters
    ----------
    state_dict
        A torchvision Mask R-CNN / Faster R-CNN state_dict (as from :func:`segbench.models.checkpoint.read_weights`).

    Returns
    -------
    int
        Rows of ``roi_heads.box_predictor.cls_score.weight`` minus one (the background).

    Raises
    ------
    ValueError
        When the state_dict has no box predictor (e.g. a backbone-only file).

    Examples
    --------
    >>> count_classes_in_state_dict({"roi_heads.box_predictor.cls_score.weight": torch.zeros(4, 1024)})
    3
    """
    if _CLS_SCORE_WEIGHT not in state_dict:
        raise ValueError(f"state_dict has no '{_CLS_SCORE_WEIGHT}': it is not a Mask R-CNN state_dict")
    return int(state_dict[_CLS_SCORE_WEIGHT].shape[0]) - 1


def mask_head_widths(state_dict: Mapping[str, Tensor]) -> list[int] | None:
    """The output channels of a Mask R-CNN state_dict's mask head convolutions, in order (``None``: no mask head).

    Both of torchvision's key layouts are read (``mask_head.<i>.0.weight`` and the older ``mask_fcn<i>.weight``).

    >>> mask_head_widths({f"roi_heads.mask_head.{i}.0.weight": torch.zeros(128, 8, 3, 3) for i in range(4)})
    [128, 128, 128, 128]
    >>> mask_head_widths({"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)}) is None
    True
    """
    layers = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"roi_heads\.mask_head\.(?:(\d+)\.0|mask_fcn(\d+))\.weight", str(key))
        if m and getattr(value, "ndim", 0) == 4:
            layers[int(m.group(1) or m.group(2))] = int(value.shape[0])
    return [layers[i] for i in sorted(layers)] or None


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def build_maskrcnn(
    *,
    num_classes: int,
    backbone: str = "resnet50_fpn",
    weights: str | os.PathLike[str] | None = None,
    trainable_backbone_layers: int | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    box_batch_size_per_image: int = 512,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    anchor_sizes: Sequence[int] | None = None,
    norm_layer: str | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    keep_size: bool = False,
    mask_head_layers: Sequence[int] | None = None,
    mask_resolution: int = 28,
    fast_roi_align: bool = True,
) -> MaskRCNN:
    """Build a torchvision Mask R-CNN for ``num_classes`` foreground classes.

    The model takes a list of ``FloatTensor[3, H, W]`` images in ``[0, 1]``. In training mode it also
    takes one target dict per image — ``boxes`` ``FloatTensor[N, 4]`` (``x1, y1, x2, y2``, pixels),
    ``labels`` ``Int64Tensor[N]`` (``1..num_classes``, 0 is background) and ``masks``
    ``UInt8Tensor[N, H, W]``; ``N = 0`` (an image without objects) is allowed — and returns a dict of
    losses including ``loss_mask``. In eval mode it returns per image ``boxes`` ``FloatTensor[K, 4]``
    (x1y1x2y2), ``labels`` ``Int64Tensor[K]``, ``scores`` ``Tensor[K]`` and ``masks``
    ``FloatTensor[K, 1, H, W]`` (probabilities).

    Parameters
    ----------
    num_classes
        Foreground classes (the model gets ``num_classes + 1`` outputs, index 0 is the background).
    backbone
        One of :data:`BACKBONES`: ``"resnet50_fpn"`` (torchvision ``maskrcnn_resnet50_fpn``),
        ``"resnet50_fpn_v2"`` (``maskrcnn_resnet50_fpn_v2``: 2-conv RPN head, 4-conv box head, normalised
        FPN and heads), ``"resnet18_fpn"``, ``"resnet34_fpn"`` or ``"mobilenet_v3_large_fpn"`` (as in
        ``fasterrcnn_mobilenet_v3_large_fpn``: 3 feature maps, every anchor size on each).
    weights
        ``None`` (from scratch), ``"coco"`` (torchvision's COCO Mask R-CNN weights, resnet50 variants only;
        when ``num_classes != 90`` the box and mask predictors are re-initialised for ``num_classes``),
        ``"imagenet"`` (ImageNet classification weights for the backbone only), or the path of a local
        file: a state_dict, a segbench/Lightning checkpoint, or a backbone classifier state_dict (such as
        torchvision's ImageNet ``resnet50-*.pth``). A file with another class count gets fresh predictors.
        Downloads go through ``torch.hub`` (cached under ``torch.hub.get_dir()``); offline, a
        :class:`~segbench.types.SegbenchError` says which file to fetch elsewhere.
    trainable_backbone_layers
        Backbone stages left trainable, counted from the last one: 0–5 for ResNets (5 = all), 0–6 for
        MobileNetV3 (6 = all). Default 3 when pretrained weights are used. From scratch everything is
        trained; another value is then ignored with a warning (as torchvision does).
    min_size, max_size
        Resize range of :class:`~torchvision.models.detection.transform.GeneralizedRCNNTransform`. A
        sequence for ``min_size`` picks one at random per training batch.
    box_batch_size_per_image, rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test, box_detections_per_img, box_score_thresh
        Passed unchanged to :class:`~torchvision.models.detection.MaskRCNN`.
    anchor_sizes
        Anchor sizes in pixels, aspect ratios ``(0.5, 1, 2)``. ResNet backbones: exactly one size per FPN
        level (5, default ``[32, 64, 128, 256, 512]``). MobileNetV3: every size is used on each of its 3
        feature maps (any number, same default), like torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``.
    norm_layer
        Normalisation in the backbone: ``"frozen_batchnorm"`` (``FrozenBatchNorm2d``, the default when any
        weights are loaded), ``"batchnorm"`` (``nn.BatchNorm2d``, the default from scratch) or ``"groupnorm"``
        (``nn.GroupNorm`` with 32 groups, fewer where a layer has fewer channels; from scratch or from a file
        trained with it). ``"groupnorm"`` with ``"coco"``/``"imagenet"`` is an error: those weights were trained
        with batch norm. A file must be loaded with the norm layer it was trained with (batchnorm and
        frozen_batchnorm files are interchangeable).
    image_mean, image_std
        Per-channel normalisation; ``None`` keeps torchvision's ImageNet values.
    keep_size
        Do not resize images (``min_size``/``max_size`` are then unused): they are only normalised and
        padded. For small objects in images of very different sizes (microscopy): train on crops and
        predict at the native resolution. Uses :class:`NativeSizeTransform`, which is scriptable.
    mask_head_layers
        Output channels of the mask head's 3x3 convolutions, e.g. ``[128, 128, 128, 128]``; ``None`` keeps
        torchvision's ``[256, 256, 256, 256]``. A lighter head makes CPU training steps cheaper (the mask head
        runs on every positive RoI); weights files must then have been trained with the same head.
    mask_resolution
        Side of the predicted mask per box (torchvision: 28). ``56`` pools the mask head's RoIs at 28 x 28
        instead of 14 x 14 (its transposed convolution doubles that), so large objects keep a finer edge,
        for about 4x the mask head's compute. The head's weights do not depend on it: COCO weights load.
    fast_roi_align
        Pool the RoIs of CPU tensors with :mod:`segbench.models.roi_pool` (torchvision's numbers to float32
        rounding; a 256-RoI pooling with its backward ~9x faster on two cores). ``False``: torchvision's
        kernel. CUDA tensors and exports (TorchScript, ONNX) always use torchvision's.

    Returns
    -------
    torchvision.models.detection.MaskRCNN
        In training mode, on the CPU.

    Raises
    ------
    ValueError
        Invalid option value or combination (message names the option).
    SegbenchError
        Unknown weights name, missing/unsafe/mismatching weights file, or a download that failed.

    Notes
    -----
    All ``FrozenBatchNorm2d`` layers use ``eps=1e-5``, also with ``weights="coco"`` on ``resnet50_fpn``
    (torchvision's own builder sets ``eps=0`` for those weights). This keeps a model reloaded from a saved
    checkpoint numerically identical to the one that was trained.

    Examples
    --------
    >>> model = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", min_size=64, max_size=64)
    >>> model.roi_heads.box_predictor.cls_score.out_features
    3
    """
    check_int("num_classes", num_classes, minimum=1)
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}")
    source = _resolve_weights(weights)
    pretrained = source is not None
    norm_name = _resolve_norm_layer(norm_layer, source)
    trainable = _resolve_trainable_layers(trainable_backbone_layers, backbone, pretrained)
    anchor_generator = _anchor_generator(anchor_sizes, backbone)

    coco_state: dict[str, Tensor] | None = None
    if source == "coco":
        if backbone not in _COCO_WEIGHTS:
            raise SegbenchError(
                f"There are no COCO Mask R-CNN weights for backbone {backbone!r}; torchvision has them for "
                f"{', '.join(_COCO_WEIGHTS)}. Use one of those, or weights=imagenet / a local file / null."
            )
        coco_enum = _COCO_WEIGHTS[backbone]
        with _download_errors("COCO Mask R-CNN", coco_enum):  # fetch first: fail before building
            coco_state = coco_enum.get_state_dict(progress=False, check_hash=True)

    kwargs: dict[str, object] = {
        "min_size": _int_or_tuple("min_size", min_size),
        "max_size": max_size,
        "box_batch_size_per_image": box_batch_size_per_image,
        "rpn_pre_nms_top_n_train": rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train,
        "rpn_pre_nms_top_n_test": rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
        "box_detections_per_img": box_detections_per_img,
        "box_score_thresh": box_score_thresh,
    }
    if image_mean is not None:
        kwargs["image_mean"] = _floats3("image_mean", image_mean)
    if image_std is not None:
        kwargs["image_std"] = _floats3("image_std", image_std)

    mask_layers = _mask_head_layers(mask_head_layers)
    mask_resolution = check_int("mask_resolution", mask_resolution, minimum=14, maximum=112)
    if mask_resolution % 2:
        raise ValueError(
            f"mask_resolution must be even (the mask head doubles its RoIs), got {mask_resolution}"
        )
    body = _build_body(backbone, _NORM_FACTORIES[norm_name], imagenet=source == "imagenet")
    model = float32_boxes(_assemble(backbone, body, trainable, anchor_generator, num_classes + 1, kwargs))
    if mask_layers is not None:
        norm = nn.BatchNorm2d if backbone == "resnet50_fpn_v2" else None
        model.roi_heads.mask_head = MaskRCNNHeads(
            model.backbone.out_channels, mask_layers, 1, norm_layer=norm
        )
        model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes + 1)
    if mask_resolution != 28:
        pool = model.roi_heads.mask_roi_pool
        model.roi_heads.mask_roi_pool = MultiScaleRoIAlign(
            pool.featmap_names, output_size=mask_resolution // 2, sampling_ratio=pool.sampling_ratio
        )
    if fast_roi_align:
        fast_roi_pools(model)
    if keep_size:
        t = model.transform
        model.transform = NativeSizeTransform(
            t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible
        )
    logger.debug(
        "Built Mask R-CNN %s: %d classes, weights=%s, norm_layer=%s, trainable_backbone_layers=%d",
        backbone,
        num_classes,
        weights,
        norm_name,
        trainable,
    )

    if coco_state is not None:
        _load_into(
            model,
            coco_state,
            what=f"torchvision COCO weights {_COCO_WEIGHTS[backbone]}",
            backbone=backbone,
            num_classes=num_classes,
            quiet_head_swap=True,
        )
    elif isinstance(source, Path):
        _load_into(
            model,
            read_weights(source),
            what=f"weights file {source}",
            backbone=backbone,
            num_classes=num_classes,
            quiet_head_swap=False,
        )
    return model


def _resolve_weights(weights: str | os.PathLike[str] | None) -> str | Path | None:
    """``None``, ``"coco"``, ``"imagenet"`` or an existing file path; anything else is a SegbenchError."""
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise SegbenchError(
            f"model.net.weights must be null, 'coco', 'imagenet' or a file path, got {weights!r}"
        )
    text = os.fspath(weights)
    if isinstance(weights, str) and text.strip().lower() in PRETRAINED_WEIGHTS:
        return text.strip().lower()
    path = Path(text).expanduser()
    if path.is_file():
        return path
    looks_like_path = (
        not isinstance(weights, str)
        or os.sep in text
        or "/" in text
        or text.startswith(("~", "."))
        or path.suffix.lower() in _CHECKPOINT_SUFFIXES
    )
    if looks_like_path:
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise SegbenchError(
            f"Weights file {path} {what}. Pass an existing .pth/.ckpt file as model.net.weights=..."
        )
    raise SegbenchError(
        f"Unknown weights {weights!r}. Valid choices: null (train from scratch), "
        f"{', '.join(repr(w) for w in PRETRAINED_WEIGHTS)}, or the path of a local .pth/.ckpt file."
    )


def _resolve_norm_layer(norm_layer: str | None, source: str | Path | None) -> str:
    if norm_layer is not None and norm_layer not in NORM_LAYERS:
        raise ValueError(
            f"Unknown norm_layer {norm_layer!r}; choose one of: {', '.join(NORM_LAYERS)} (or null)"
        )
    if norm_layer is None:
        return "batchnorm" if source is None else "frozen_batchnorm"
    if norm_layer == "groupnorm" and source in PRETRAINED_WEIGHTS:
        raise ValueError(
            f"norm_layer='groupnorm' cannot be combined with weights={source!r}: those weights were trained "
            "with batch norm. Use norm_layer=frozen_batchnorm (or batchnorm), or weights=null for group norm."
        )
    return norm_layer


def _group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of 32 that divides ``num_channels``."""
    return nn.GroupNorm(math.gcd(32, num_channels), num_channels)


_NORM_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "frozen_batchnorm": FrozenBatchNorm2d,
    "groupnorm": _group_norm,
}


def _resolve_trainable_layers(value: int | None, backbone: str, pretrained: bool) -> int:
    maximum, default = _TRAINABLE_LAYERS[backbone]
    if value is not None:
        check_int(f"trainable_backbone_layers (backbone {backbone})", value, minimum=0, maximum=maximum)
    if not pretrained:
        if value is not None and value != maximum:
            logger.warning(
                "trainable_backbone_layers=%d ignored: without pretrained weights all %d backbone layers "
                "are trained (set weights to freeze layers).",
                value,
                maximum,
            )
        return maximum
    return default if value is None else value


def _anchor_generator(anchor_sizes: Sequence[int] | None, backbone: str) -> AnchorGenerator:
    n_maps = _NUM_FEATURE_MAPS[backbone]
    if anchor_sizes is None:
        sizes = _DEFAULT_ANCHOR_SIZES
    else:
        if isinstance(anchor_sizes, (str, bytes)) or not isinstance(anchor_sizes, Sequence):
            raise ValueError(f"anchor_sizes must be a list of positive integers, got {anchor_sizes!r}")
        sizes = tuple(anchor_sizes)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
            raise ValueError(f"anchor_sizes must be a list of positive integers, got {list(anchor_sizes)!r}")
    if backbone == "mobilenet_v3_large_fpn":
        # torchvision's fasterrcnn_mobilenet_v3_large_fpn: every size on each of the 3 feature maps.
        per_map: tuple[tuple[int, ...], ...] = (sizes,) * n_maps
    else:
        if len(sizes) != n_maps:
            raise ValueError(
                f"anchor_sizes needs exactly {n_maps} sizes for backbone {backbone!r} (one per FPN level), "
                f"got {len(sizes)}: {list(sizes)}"
            )
        per_map = tuple((s,) for s in sizes)
    return AnchorGenerator(per_map, (_ASPECT_RATIOS,) * n_maps)


def _mask_head_layers(value: Sequence[int] | None) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"mask_head_layers must be a non-empty list of channel counts, got {value!r}")
    return [check_int("mask_head_layers", v, minimum=1) for v in value]


def _int_or_tuple(name: str, value: int | Sequence[int]) -> int | tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return check_int(name, value, minimum=1)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0:
        return tuple(check_int(name, v, minimum=1) for v in value)
    raise ValueError(f"{name} must be a positive integer or a list of them, got {value!r}")


def _floats3(name: str, value: Sequence[float]) -> list[float]:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {value!r}") from exc
    if len(out) != 3:
        raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {value!r}")
    return out


@contextmanager
def _download_errors(what: str, weights_enum: WeightsEnum) -> Iterator[None]:
    """Turn a failed torch.hub download into a SegbenchError that says how to proceed offline."""
    try:
        yield
    except OSError as exc:  # urllib's URLError/HTTPError, socket errors, a read-only cache dir...
        url = weights_enum.url
        filename = url.rsplit("/", 1)[-1]
        cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
        raise SegbenchError(
            f"Could not download the {what} weights ({weights_enum}) from {url}: {exc}. "
            f"Without network access, download that file on another machine, copy it here and pass its "
            f"local path as model.net.weights=/path/{filename} (or place it at {cache}, where torch.hub looks "
            f"before downloading)."
        ) from exc


def _build_body(backbone: str, norm: Callable[[int], nn.Module], *, imagenet: bool) -> nn.Module:
    """The torchvision classification network whose features the FPN uses (ImageNet weights if asked)."""
    weights_enum = _IMAGENET_WEIGHTS[backbone] if imagenet else None
    ctor = mobilenet_v3_large if backbone == "mobilenet_v3_large_fpn" else _RESNETS[backbone]
    if weights_enum is None:
        return ctor(weights=None, norm_layer=norm)
    with _download_errors("ImageNet backbone", weights_enum):
        return ctor(weights=weights_enum, norm_layer=norm)


def _assemble(
    backbone: str,
    body: nn.Module,
    trainable_layers: int,
    anchor_generator: AnchorGenerator,
    num_outputs: int,
    kwargs: dict[str, object],
) -> MaskRCNN:
    """FPN + heads exactly as torchvision's builders lay them out (so their state_dicts fit)."""
    if backbone == "mobilenet_v3_large_fpn":
        fpn_backbone = _mobilenet_extractor(body, True, trainable_layers)
        return MaskRCNN(
            fpn_backbone, num_classes=num_outputs, rpn_anchor_generator=anchor_generator, **kwargs
        )
    if backbone == "resnet50_fpn_v2":
        fpn_backbone = _resnet_fpn_extractor(body, trainable_layers, norm_layer=nn.BatchNorm2d)
        channels = fpn_backbone.out_channels
        return MaskRCNN(
            fpn_backbone,
            num_classes=num_outputs,
            rpn_anchor_generator=anchor_generator,
            rpn_head=RPNHead(channels, anchor_generator.num_anchors_per_location()[0], conv_depth=2),
            box_head=FastRCNNConvFCHead(
                (channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d
            ),
            mask_head=MaskRCNNHeads(channels, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d),
            **kwargs,
        )
    fpn_backbone = _resnet_fpn_extractor(body, trainable_layers)
    return MaskRCNN(fpn_backbone, num_classes=num_outputs, rpn_anchor_generator=anchor_generator, **kwargs)


def _is_class_head(key: str) -> bool:
    return key.startswith(_CLASS_HEAD_PREFIXES)


def _backbone_only_keys(state_dict: Mapping[str, Tensor], backbone: str) -> dict[str, Tensor] | None:
    """Map a classification-network state_dict (e.g. ImageNet ``resnet50-*.pth``) onto ``backbone.body``."""
    if any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state_dict):
        return None
    if backbone == "mobilenet_v3_large_fpn":
        if not any(k.startswith("features.") for k in state_dict):
            return None
        return {
            "backbone.body." + k[len("features.") :]: v
            for k, v in state_dict.items()
            if k.startswith("features.")
        }
    if "conv1.weight" not in state_dict:
        return None
    return {"backbone.body." + k: v for k, v in state_dict.items() if not k.startswith("fc.")}


def _load_into(
    model: MaskRCNN,
    state_dict: Mapping[str, Tensor],
    *,
    what: str,
    backbone: str,
    num_classes: int,
    quiet_head_swap: bool,
) -> None:
    """Load ``state_dict`` into ``model``; only a class-count difference or a backbone-only file is tolerated."""
    state = dict(state_dict)
    allowed_missing: Callable[[str], bool] = lambda key: False  # noqa: E731
    body_only = _backbone_only_keys(state, backbone)
    if body_only is not None:
        state = body_only
        allowed_missing = lambda key: not key.startswith("backbone.body.")  # noqa: E731
        logger.info("Loaded backbone-only weights from %s; the FPN and heads start untrained.", what)
    elif _CLS_SCORE_WEIGHT in state:
        file_classes = count_classes_in_state_dict(state)
        if file_classes != num_classes:
            state = {k: v for k, v in state.items() if not _is_class_head(k)}
            allowed_missing = _is_class_head
            log = logger.info if quiet_head_swap else logger.warning
            log(
                "Replaced the box and mask predictor heads: %s has %d classes, the model is built for %d "
                "classes; the new heads (roi_heads.box_predictor, roi_heads.mask_predictor.mask_fcn_logits) "
                "are freshly initialised.",
                what,
                file_classes,
                num_classes,
            )

    expected = model.state_dict()

    def ignorable(key: str) -> bool:  # BatchNorm2d has it, FrozenBatchNorm2d not: files of both fit
        return key.endswith("num_batches_tracked")

    missing = [k for k in expected if k not in state and not ignorable(k) and not allowed_missing(k)]
    unexpected = [k for k in state if k not in expected and not ignorable(k)]
    reshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or reshaped:
        problems = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with another shape", reshaped),
        ):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise SegbenchError(
            f"The {what} does not fit a Mask R-CNN with backbone {backbone!r}: keys {'; '.join(problems)}. "
            "Build the model with the backbone, norm_layer, anchor_sizes and mask_head_layers the weights were "
            "trained with "
            f"(backbones: {', '.join(BACKBONES)})."
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
