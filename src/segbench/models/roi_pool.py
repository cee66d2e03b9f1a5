"""RoIAlign on the CPU as one weighted gather: torchvision's numbers, several times faster to train.

Why not torchvision's kernel: its CPU ``roi_align`` runs on one thread and its backward recomputes the
bilinear weights of every sample for every channel. In a Mask R-CNN training step on two cores (dsb2018
recipe: four 256 px crops, 64 RoIs per image, a ResNet-18-FPN) the box and mask poolers took about a third
of the step (profiled: 0.38 of 1.18 s). Here the sample positions and weights are computed once per RoI
(they do not depend on the channel) and the pooling is ``F.embedding_bag(mode="sum")`` over the feature
map seen as a table of ``N * H * W`` rows of ``C`` values: a multithreaded, vectorised weighted gather
whose backward is the matching scatter-add. Same ``aligned=False`` semantics as torchvision
(``roi_align`` in ``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``): equal to float32 rounding, tested.
torchvision's own pure-PyTorch ``_roi_align`` (its ``torch.compile`` path) was measured too: slower than
the C++ kernel, because it materialises every sample of every channel.

:class:`FastMultiScaleRoIAlign` is torchvision's ``MultiScaleRoIAlign`` with this pooling on CPU tensors;
CUDA tensors, TorchScript and ONNX tracing keep torchvision's op, so exports are unchanged.
"""

from typing import Dict, List, Optional, Tuple  # noqa: UP035 - TorchScript reads these

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper, _filter_input, _multiscale_roi_align, _setup_scales


def _axis_samples(start: Tensor, end: Tensor, bins: int, ratio: int, size: Tensor) -> tuple[Tensor, Tensor]:
    """Along one axis: the two neighbouring feature rows (or columns) of every sample point and their
    bilinear weights, ``[K, bins, 2 * ratio]`` each (torchvision's ``bilinear_interpolate``, per axis)."""
    length = (end - start).clamp(min=1.0)  # aligned=False: a RoI is at least one feature cell
    step = length / bins
    # start + bin * step + (i + 0.5) * step / ratio, in torchvision's order of operations
    bin_ = torch.arange(bins, dtype=start.dtype, device=start.device)
    sub = torch.arange(ratio, dtype=start.dtype, device=start.device) + 0.5
    p = start[:, None, None] + bin_[None, :, None] * step[:, None, None]
    p = p + sub[None, None, :] * (step / ratio)[:, None, None]
    p = p.reshape(start.shape[0], bins * ratio)  # [K, bins * ratio]
    inside = (p >= -1.0) & (p <= size[:, None].to(p.dtype))  # a sample further out contributes 0
    p = p.clamp(min=0)
    low = p.floor().long()
    last = (size - 1)[:, None]
    edge = low >= last
    low = torch.where(edge, last, low)
    high = torch.where(edge, last, low + 1)
    p = torch.where(edge, low.to(p.dtype), p)
    frac = p - low
    rows = torch.stack([low, high], -1).reshape(-1, bins, 2 * ratio)
    weights = (torch.stack([1 - frac, frac], -1) * inside[..., None]).reshape(-1, bins, 2 * ratio)
    return rows, weights


def roi_align_levels(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: list[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
) -> Tensor:
    """torchvision's ``roi_align`` (``aligned=False``, a fixed ``sampling_ratio > 0``) of every RoI on its
    level, all levels in one gather.

    Parameters
    ----------
    features
        Feature maps ``[N, C, H_l, W_l]`` (any memory format and float dtype; pooled in float32).
    rois
        ``[K, 5]``: batch index, x1, y1, x2, y2 in image pixels.
    levels
        ``[K]`` level index of each RoI into ``features``.
    scales
        Feature-map scale of each level (``1 / stride``).
    output_size
        ``(height, width)`` of the pooled grid.
    sampling_ratio
        Sample points per bin and axis.

    Returns
    -------
    Tensor
        ``[K, C, height, width]`` in the features' dtype (channels-last strides).
    """
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be > 0 for the gather RoIAlign, got {sampling_ratio}")
    dtype, device = features[0].dtype, features[0].device
    channels = features[0].shape[1]
    ph, pw = output_size
    k = rois.shape[0]
    # every level's map as rows of C values, one table: [sum_l N * H_l * W_l, C]
    table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features]).float()
    hs = torch.tensor([f.shape[2] for f in features], device=device)
    ws = torch.tensor([f.shape[3] for f in features], device=device)
    rows_per_level = torch.tensor([f.shape[0] * f.shape[2] * f.shape[3] for f in features], device=device)
    first_row = torch.cumsum(rows_per_level, 0) - rows_per_level
    rois = rois.float()
    scale = torch.tensor(scales, dtype=torch.float32, device=device)[levels]
    h, w = hs[levels], ws[levels]
    base = first_row[levels] + rois[:, 0].long() * h * w
    ys, wy = _axis_samples(rois[:, 2] * scale, rois[:, 4] * scale, ph, sampling_ratio, h)
    xs, wx = _axis_samples(rois[:, 1] * scale, rois[:, 3] * scale, pw, sampling_ratio, w)
    # [K, PH, PW, 2r, 2r]: each bin averages r x r samples of 4 neighbours
    index = base[:, None, None, None, None] + ys[:, :, None, :, None] * w[:, None, None, None, None]
    index = index + xs[:, None, :, None, :]
    weight = wy[:, :, None, :, None] * wx[:, None, :, None, :] / float(sampling_ratio * sampling_ratio)
    taps = index.shape[-1] * index.shape[-2]
    with torch.autocast(device.type, enabled=False):
        out = F.embedding_bag(
            index.reshape(k * ph * pw, taps),
            table,
            per_sample_weights=weight.reshape(k * ph * pw, taps),
            mode="sum",
        )
    return out.view(k, ph, pw, channels).permute(0, 3, 1, 2).to(dtype)


#: Above this many feature values (a 256-channel stride-4 map of a ~2000 x 2000 image at native size),
#: prediction pools with torchvision's kernel: the gather reads a float32 NHWC copy of the maps, which would
#: add gigabytes there. Training (gradients needed) always gathers: its crops are small.
GATHER_MAX_VALUES_NO_GRAD = 1 << 26


@torch.jit.unused
def _too_large_to_copy(
    x_filtered: List[Tensor],  # noqa: UP006
) -> bool:
    return not torch.is_grad_enabled() and sum(f.numel() for f in x_filtered) > GATHER_MAX_VALUES_NO_GRAD


@torch.jit.unused
def _gather_pool(
    x_filtered: List[Tensor],  # noqa: UP006
    boxes: List[Tensor],  # noqa: UP006
    output_size: List[int],  # noqa: UP006
    sampling_ratio: int,
    scales: Optional[List[float]],  # noqa: UP006, UP045
    mapper: Optional[LevelMapper],  # noqa: UP045
) -> Tensor:
    assert scales is not None and mapper is not None
    rois = torchvision.ops.poolers._convert_to_roi_format(boxes)
    if len(x_filtered) == 1:
        levels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
    else:
        levels = mapper(boxes).long()
    return roi_align_levels(
        x_filtered, rois, levels, scales, (int(output_size[0]), int(output_size[1])), sampling_ratio
    )


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments, no state) pooling CPU tensors with
    :func:`roi_align_levels`. ``forward`` is torchvision's, written out again: TorchScript compiles no
    ``super()`` call; scripted or traced, and on CUDA, it pools with torchvision's ``roi_align``."""

    def forward(
        self,
        x: Dict[str, Tensor],  # noqa: UP006
        boxes: List[Tensor],  # noqa: UP006
        image_shapes: List[Tuple[int, int]],  # noqa: UP006
    ) -> Tensor:
        x_filtered = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                x_filtered, image_shapes, self.canonical_scale, self.canonical_level
            )
        scales = self.scales
        mapper = self.map_levels
        if (
            torch.jit.is_scripting()
            or torchvision._is_tracing()
            or x_filtered[0].device.type != "cpu"
            or self.sampling_ratio <= 0
            or _too_large_to_copy(x_filtered)
        ):
            return _multiscale_roi_align(
                x_filtered, boxes, self.output_size, self.sampling_ratio, scales, mapper
            )
        return _gather_pool(x_filtered, boxes, self.output_size, self.sampling_ratio, scales, mapper)


def _swap_pool_class(model: torch.nn.Module, old: type, new: type) -> torch.nn.Module:
    heads = model.roi_heads
    for pool in (heads.box_roi_pool, getattr(heads, "mask_roi_pool", None)):
        if pool is not None and type(pool) is old:
            pool.__class__ = new
    return model


def fast_roi_pools(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model``'s (a torchvision Mask / Faster R-CNN) RoI poolers :class:`FastMultiScaleRoIAlign`,
    in place (the class is changed: the poolers hold no weights, the state_dict is unchanged)."""
    return _swap_pool_class(model, MultiScaleRoIAlign, FastMultiScaleRoIAlign)


def torchvision_roi_pools(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`fast_roi_pools` in place (torchvision's pooling everywhere)."""
    return _swap_pool_class(model, FastMultiScaleRoIAlign, MultiScaleRoIAlign)
