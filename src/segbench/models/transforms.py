"""torchvision patches, in one place: what segbench changes in torchvision's detection models and why.

* :class:`NativeSizeTransform` — the detection transform without its resize (``keep_size``: train on crops,
  predict at the native resolution);
* :class:`ExactResizeTransform` — the resize computed as eager PyTorch computes it, so that scripted /
  traced / ONNX models resize to the same size (exports);
* :func:`fix_roi_pool_scales` — RoI pooler scales set from an exact input instead of from the first
  batch the model happens to see;
* :class:`Float32AnchorGenerator`, :class:`Float32RPNHead`, :class:`Float32BoxPredictor` and
  :func:`float32_boxes` — box coordinates in float32 under bfloat16 autocast (training with
  ``trainer.precision=bf16-mixed``, ``predict precision=bf16``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple  # noqa: UP035 - TorchScript needs typing's generics

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _get_shape_onnx


class NativeSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without the resize: normalise and batch (pad) only."""

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


def _traced_size(size: Tensor) -> list[int]:
    # Tracing records the tensor elements as dynamic sizes; TorchScript only needs the declared type.
    return [size[0], size[1]]  # type: ignore[list-item]


# TorchScript reads an unused function's signature from real annotations, not the strings that
# ``from __future__ import annotations`` leaves.
_traced_size.__annotations__ = {"size": Tensor, "return": List[int]}  # noqa: UP006
_traced_size = torch.jit.unused(_traced_size)


class ExactResizeTransform(GeneralizedRCNNTransform):
    """torchvision's ``GeneralizedRCNNTransform`` whose resize computes the new size as eager PyTorch does.

    In eager mode torchvision computes the resize scale in Python (float64); when scripted or traced
    it computes it in float32 tensors, so for many image sizes the scripted / ONNX model resizes to one
    pixel less than the eager model (e.g. a 31 x 30 image at ``min_size = max_size = 64``: 63 x 61
    instead of 64 x 61) and its detections differ. Here the scale and the new size are computed in
    float64 in every mode (1-D tensors, so that the ONNX exporter keeps them double) and passed to
    ``interpolate`` as a size, which samples exactly as eager ``recompute_scale_factor=True`` does.
    Inference only (used for exports).
    """

    def resize(
        self,
        image: Tensor,
        target: Optional[Dict[str, Tensor]] = None,  # noqa: UP006, UP045 - TorchScript reads these
    ) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:  # noqa: UP006, UP045
        if torchvision._is_tracing():
            shape = _get_shape_onnx(image).to(torch.float64)
        else:
            shape = torch.tensor(image.shape[-2:], dtype=torch.float64)
        limits = torch.tensor([float(self.min_size[-1]), float(self.max_size)], dtype=torch.float64)
        extremes = torch.stack([shape.min(), shape.max()])
        scale = torch.min(limits / extremes, dim=0, keepdim=True)[0]
        new = torch.floor(shape * scale).to(torch.int64)
        if torchvision._is_tracing():
            size = _traced_size(new)
        else:
            size = [int(new[0].item()), int(new[1].item())]
        out = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        return out[0], target


def fix_roi_pool_scales(model: torch.nn.Module, *, side: int = 128) -> torch.nn.Module:
    """Set the feature-map scales of the RoI poolers from an exact ``side x side`` input.

    torchvision's ``MultiScaleRoIAlign`` infers its scales from the *first* batch it sees and keeps
    them: an image whose resized height is far from its padded height (small models: a 50 x 72 image at
    ``min_size = max_size = 64`` is resized to 44 x 64 and padded to 64 x 64) makes it round the
    stride-4 level to 1/2, and every later prediction of that model object is wrong. Exports freeze
    whatever scales the model holds, so they are set here first, from padding-free feature maps.
    """
    if side % 32:
        raise ValueError(f"side must be a multiple of 32, got {side}")
    heads = model.roi_heads
    pools = [p for p in (heads.box_roi_pool, getattr(heads, "mask_roi_pool", None)) if p is not None]
    with torch.inference_mode():
        features = model.backbone(torch.zeros(1, 3, side, side, device=next(model.parameters()).device))
        box = [torch.tensor([[0.0, 0.0, 8.0, 8.0]], device=next(iter(features.values())).device)]
        for pool in pools:
            pool.scales, pool.map_levels = None, None
            pool(features, box, [(side, side)])
    return model


# --------------------------------------------------------------------------------------------------
# Box coordinates in float32 under bfloat16 autocast
# --------------------------------------------------------------------------------------------------
# Under autocast torchvision makes its anchors in the feature maps' dtype and decodes boxes in the dtype of
# the regression output (``BoxCoder.decode`` casts the reference boxes to it): with bfloat16 every anchor,
# proposal and detected box is rounded to an 8-bit mantissa, i.e. to 2 px from x = 256, 4 px from 512 and
# 8 px from 1024. Small objects in large images lose their boxes, and a thin proposal near x = 384 rounds
# to zero height: log(0) in the box targets, a NaN box loss at the second step of a native-size nucleus run
# (dsb2018, 384 px crops). The convolutions stay in bfloat16; only the 4 box numbers per anchor and RoI are
# float32 (the box losses then compare float32 with float32). In float32 models each ``.float()`` is the
# tensor itself: exports and fp32 runs are unchanged.


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` whose anchors are float32 when the feature maps are bfloat16 or
    float16 (the same anchors in every precision)."""

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device):
        if dtype == torch.bfloat16 or dtype == torch.float16:
            dtype = torch.float32
        self.cell_anchors = [cell_anchor.to(dtype=dtype, device=device) for cell_anchor in self.cell_anchors]


class Float32RPNHead(RPNHead):
    """torchvision's ``RPNHead`` (same layers, same state_dict) whose box deltas are float32.

    ``forward`` is torchvision's, written out again: TorchScript (exports) compiles no ``super()`` call.
    """

    def forward(self, x: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:  # noqa: UP006
        logits = []
        bbox_reg = []
        for feature in x:
            t = self.conv(feature)
            logits.append(self.cls_logits(t))
            bbox_reg.append(self.bbox_pred(t).float())
        return logits, bbox_reg


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's ``FastRCNNPredictor`` (same layers, same state_dict) whose box deltas are float32.

    ``forward`` is torchvision's, written out again: TorchScript (exports) compiles no ``super()`` call.
    """

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:  # noqa: UP006
        if x.dim() == 4:
            torch._assert(
                list(x.shape[2:]) == [1, 1],
                f"x has the wrong shape, expecting the last two dimensions to be [1,1] instead of {list(x.shape[2:])}",
            )
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x).float()


def float32_boxes(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model`` (a torchvision Mask / Faster R-CNN) keep its box coordinates in float32 under
    bfloat16 autocast, in place: its anchor generator, RPN head and box predictor become the float32
    variants above. The modules keep their parameters (the class is changed, nothing is rebuilt), so
    initialisation, random state and state_dict keys are those of torchvision's model. Returns ``model``.
    """
    for module, cls in (
        (model.rpn.anchor_generator, Float32AnchorGenerator),
        (model.rpn.head, Float32RPNHead),
        (model.roi_heads.box_predictor, Float32BoxPredictor),
    ):
        base = cls.__mro__[1]
        if type(module) not in (base, cls):
            raise TypeError(f"float32_boxes: expected a {base.__name__}, got {type(module).__name__}")
        # the subclass adds no state: changing the class keeps the weights (and the random state that
        # built them) exactly
        module.__class__ = cls
    return model
