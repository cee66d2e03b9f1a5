"""A trained Mask R-CNN as a *segmenter* (``image (H, W, 3) uint8 -> Instances``)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Mapping

import numpy as np
import torch

from segbench.types import Instances, SegbenchError, masks_to_rles

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``; any other name as it is."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``FloatTensor[3, H, W]`` in 0..1 (the torchvision detection input)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255)


def output_to_instances(
    output: dict[str, torch.Tensor], image_size: tuple[int, int], *, mask_threshold: float = 0.5
) -> Instances:
    """One torchvision Mask R-CNN output dict -> :class:`Instances` with RLE masks.

    ``output["masks"]`` is ``FloatTensor[N, 1, H, W]`` of probabilities pasted at the image size; masks are
    thresholded and run-length encoded at once, so no dense copy is kept.
    """
    boxes = output["boxes"].detach().float().cpu().numpy()
    labels = output["labels"].detach().cpu().numpy()
    scores = output["scores"].detach().float().cpu().numpy()
    rles = None
    if "masks" in output:
        m = output["masks"]
        binary = (m[:, 0] > mask_threshold) if m.ndim == 4 else (m > mask_threshold)
        rles = masks_to_rles(binary.cpu().numpy()) if len(binary) else []
    return Instances(image_size=image_size, boxes=boxes, labels=labels, scores=scores, rles=rles)


def paste_masks_to_rles(
    mask_probs: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    *,
    threshold: float = 0.5,
    profile: StageTimer | None = None,
) -> list[dict]:
    """Paste Mask R-CNN's ``[N, 1, M, M]`` mask probabilities into their boxes and run-length encode them.

    Gives the same masks as torchvision's ``paste_masks_in_image`` followed by a threshold (same box
    expansion and bilinear resize), but each mask is resized to its box only and written into one reused
    full-size buffer, so memory does not grow with the number of detections and no float image per
    detection is made. ``profile`` (:class:`StageTimer`) gets the time of ``paste`` and ``rle``.
    """
    from pycocotools import mask as mask_utils
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    h, w = image_size
    n = len(boxes)
    if n == 0:
        return []
    masks, scale = expand_masks(mask_probs, padding=1)
    eboxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    buf = np.zeros((h, w), dtype=np.uint8, order="F")
    rles = []
    clock = time.perf_counter if profile is not None else None
    t_start, t_rle = (clock(), 0.0) if clock else (0.0, 0.0)
    for k in range(n):
        x0b, y0b, x1b, y1b = eboxes[k]
        bw, bh = max(x1b - x0b + 1, 1), max(y1b - y0b + 1, 1)
        m = torch.nn.functional.interpolate(
            masks[k : k + 1], size=(bh, bw), mode="bilinear", align_corners=False
        )
        x0, x1, y0, y1 = max(x0b, 0), min(x1b + 1, w), max(y0b, 0), min(y1b + 1, h)
        inside = x1 > x0 and y1 > y0
        if inside:
            region = (m[0, 0, y0 - y0b : y1 - y0b, x0 - x0b : x1 - x0b] > threshold).numpy().astype(np.uint8)
            buf[y0:y1, x0:x1] = region
        t0 = clock() if clock else 0.0
        rles.append(mask_utils.encode(buf[:, :, None])[0])
        if clock:
            t_rle += clock() - t0
        if inside:
            buf[y0:y1, x0:x1] = 0
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    if clock:
        profile.add("paste", clock() - t_start - t_rle)
        profile.add("rle", t_rle)
    return rles


# --------------------------------------------------------------------------------------------------
# Precision, proposals, profiling
# --------------------------------------------------------------------------------------------------
#: ``precision=`` values: float32, or bfloat16 autocast with channels_last weights and inputs.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: ``proposals=auto`` keeps ``PROPOSALS_PER_DETECTION`` RPN proposals per detection the model may report,
#: and never fewer than ``MIN_PROPOSALS`` (nor more than the model's own ``rpn_post_nms_top_n_test``).
PROPOSALS_PER_DETECTION = 2
MIN_PROPOSALS = 64


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), which make bfloat16 autocast
    faster than float32; without them autocast emulates bfloat16 and is slower."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # pragma: no cover - a torch build without the probe's backend
            continue
    return False


def check_precision(precision: str, *, device: str = "cpu", key: str = "precision") -> str:
    """Validate ``precision`` (``fp32`` / ``bf16``); warn, naming ``key``, when bf16 runs on a CPU without
    bfloat16 instructions.

    bf16 is not refused there (its results are still bf16's, which is what an accuracy check wants to
    see), but autocast then emulates bfloat16 and runs slower than fp32: the warning says so.
    """
    if precision not in PRECISIONS:
        raise SegbenchError(f"{key}={precision!r} is not valid; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and str(device).startswith("cpu") and not cpu_has_bf16():
        log.warning(
            "%s=bf16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX); autocast emulates "
            "bfloat16 and runs SLOWER than fp32 here; use %s=fp32 on this machine",
            key,
            key,
        )
    return precision


def prepare_model(model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
    """``model`` (changed in place and returned) in eval mode, laid out for ``precision``: weights in
    ``channels_last`` for ``bf16`` (oneDNN's fast NHWC convolutions), contiguous for ``fp32``.

    The weights stay float32 in both cases: bf16 is autocast (:func:`predict_instances`).
    """
    check_precision(precision, device=_device_of(model).type)
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    return model.eval().to(memory_format=fmt)


def proposals_for(model, proposals: int | str | None, *, max_objects: int | None = None) -> int | None:
    """The RPN proposals per image that ``proposals`` asks for (``None``: the model's own).

    ``proposals`` is ``None`` (the model's ``rpn_post_nms_top_n_test``), a positive integer, or ``"auto"``:
    ``PROPOSALS_PER_DETECTION`` per detection the model can report — its ``box_detections_per_img``, or
    ``max_objects`` (the most objects a training image had, when the checkpoint's card records it) if
    fewer — at least ``MIN_PROPOSALS`` and at most the model's own count. The box head runs once per
    proposal, so this is the box head's cost; proposals are ranked by objectness and the ones dropped
    are the least object-like (Faster R-CNN, Ren et al. 2015, Table 2: 300 test proposals score as 2000).
    """
    own = int(model.rpn._post_nms_top_n["testing"])
    if proposals is None:
        return None
    if proposals == "auto":
        objects = int(model.roi_heads.detections_per_img)
        if max_objects is not None and int(max_objects) > 0:
            objects = min(objects, int(max_objects))
        return min(own, max(MIN_PROPOSALS, PROPOSALS_PER_DETECTION * objects))
    if isinstance(proposals, bool) or not isinstance(proposals, int) or proposals < 1:
        raise SegbenchError(
            f"proposals must be auto, a positive integer or null (the model's {own}), got {proposals!r}"
        )
    return int(proposals)


class StageTimer:
    """Wall time per named stage (``time.perf_counter``), summed over a run: the ``profile=`` of
    :func:`predict_instances` and :func:`segbench.predict.predict_images`.

    Stages may be timed from several threads (the image loader, the writer); each adds its own time.

    Examples
    --------
    >>> t = StageTimer()
    >>> with t.stage("backbone"):
    ...     pass
    >>> t.images += 1
    >>> sorted(t.seconds)
    ['backbone']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.images = 0
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def summary(self) -> dict:
        """``{"images", "stages": {name: {"ms_per_image", "percent"}}, "total_ms_per_image"}``."""
        n = max(self.images, 1)
        total = sum(self.seconds.values())
        return {
            "images": self.images,
            "stages": {
                k: {"ms_per_image": 1000 * v / n, "percent": 100 * v / total if total else 0.0}
                for k, v in self.seconds.items()
            },
            "total_ms_per_image": 1000 * total / n,
        }


_NO_STAGE = contextlib.nullcontext()


def profile_stage(profile: StageTimer | None, name: str):
    """``with profile_stage(profile, "name"):`` times the block into ``profile``; a shared no-op when
    ``profile`` is None."""
    return _NO_STAGE if profile is None else profile.stage(name)


def runtime_segmenter(runtime, mask_threshold: float):
    """An export's runtime (:mod:`segbench.export`: ``run_batch([3, H, W] tensors) -> outputs``) as
    ``segment(images, profile=None) -> list[Instances]`` (``segbench predict model=<export>`` and the export's
    accuracy check). Its internals are not visible, so the profile gets ``run`` (the runtime's call: network,
    and for ONNX the paste) and ``paste+rle``."""

    def segment(images: list[np.ndarray], profile: StageTimer | None = None) -> list[Instances]:
        with profile_stage(profile, "run"):
            outputs = runtime.run_batch([image_to_tensor(im) for im in images])
        with profile_stage(profile, "paste+rle"):
            return [
                output_to_instances(
                    {k: torch.from_numpy(np.asarray(v)) for k, v in o.items()},
                    im.shape[:2],
                    mask_threshold=mask_threshold,
                )
                for im, o in zip(images, outputs, strict=True)
            ]

    return segment


def _device_of(model) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------
@torch.inference_mode()
def predict_instances(
    model,
    images: list[torch.Tensor],
    *,
    mask_threshold: float = 0.5,
    score_threshold: float = 0.0,
    class_thresholds: Mapping[int, float] | None = None,
    proposals: int | None = None,
    precision: str = "fp32",
    profile: StageTimer | None = None,
) -> list[Instances]:
    """Run a torchvision Mask R-CNN (eval mode) on ``FloatTensor[3, H, W]`` images; :class:`Instances` at
    the original sizes with RLE masks (boxes, scores float32).

    The same network computation as ``model(images)``, stage by stage; only the last steps differ:

    * boxes scoring below ``score_threshold`` are dropped *before* the mask head (the RoI heads' own
      ``score_thresh`` is raised to it for the call), and so are those below their label's
      ``class_thresholds[label]`` (labels without one: ``score_threshold``), so no mask is computed for a
      detection that would be thrown away — the boxes, scores and masks of the detections kept are the
      same (a box below the threshold can suppress in NMS only boxes below it);
    * masks are pasted and encoded by :func:`paste_masks_to_rles` instead of being pasted as ``N``
      full-size float images;
    * images of different sizes run as separate network calls (one per size, in order): padding them into
      one batch would spend compute on the padding and change the detections near the padded edges, so
      a batch gives the detections of one image at a time.

    Parameters
    ----------
    proposals
        RPN proposals kept per image (``rpn_post_nms_top_n_test`` for the call; :func:`proposals_for`);
        ``None``: the model's own.
    precision
        ``fp32``, or ``bf16``: ``torch.autocast`` in bfloat16 with ``channels_last`` inputs (prepare the
        model with :func:`prepare_model`); results are returned in float32.
    profile
        A :class:`StageTimer` that gets the time of ``preprocess``, ``backbone``, ``rpn``, ``box_head``,
        ``mask_head``, ``paste`` and ``rle``; ``None``: nothing is timed.
    """
    if precision not in PRECISIONS:
        raise SegbenchError(f"precision={precision!r} is not valid; choose one of {', '.join(PRECISIONS)}")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(int(v) for v in im.shape[-2:]), []).append(i)
    out: list[Instances | None] = [None] * len(images)
    heads = model.roi_heads
    own_thresh, own_props = heads.score_thresh, model.rpn._post_nms_top_n["testing"]
    heads.score_thresh = max(own_thresh, float(score_threshold))
    if proposals is not None:
        model.rpn._post_nms_top_n["testing"] = int(proposals)
    try:
        for idx in groups.values():
            preds = _predict_same_size(
                model,
                [images[i] for i in idx],
                mask_threshold=mask_threshold,
                class_thresholds=class_thresholds,
                precision=precision,
                profile=profile,
            )
            for i, p in zip(idx, preds, strict=True):
                out[i] = p
    finally:
        heads.score_thresh = own_thresh
        model.rpn._post_nms_top_n["testing"] = own_props
    return out  # type: ignore[return-value]


def _predict_same_size(model, images, *, mask_threshold, class_thresholds, precision, profile):
    from torchvision.models.detection.roi_heads import maskrcnn_inference
    from torchvision.models.detection.transform import resize_boxes

    sizes = [tuple(int(v) for v in im.shape[-2:]) for im in images]
    bf16 = precision == "bf16"
    device = _device_of(model)
    heads = model.roi_heads
    # fp32 enters no autocast context: a caller's own (Lightning's bf16-mixed validation) stays in force
    with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        with profile_stage(profile, "preprocess"):
            image_list, _ = model.transform(list(images))
            if bf16:
                image_list.tensors = image_list.tensors.contiguous(memory_format=torch.channels_last)
        with profile_stage(profile, "backbone"):
            features = model.backbone(image_list.tensors)
        with profile_stage(profile, "rpn"):
            proposals, _ = model.rpn(image_list, features)
        # RoIHeads.forward (eval) in two timed halves, with the per-class drop between them
        with profile_stage(profile, "box_head"):
            shapes = image_list.image_sizes
            box_features = heads.box_head(heads.box_roi_pool(features, proposals, shapes))
            class_logits, box_regression = heads.box_predictor(box_features)
            boxes, scores, labels = heads.postprocess_detections(
                class_logits, box_regression, proposals, shapes
            )
            if class_thresholds:
                for k in range(len(boxes)):
                    cut = torch.tensor(
                        [
                            float(class_thresholds.get(int(lbl), heads.score_thresh))
                            for lbl in labels[k].tolist()
                        ],
                        device=scores[k].device,
                    )
                    keep = scores[k].float() >= cut
                    boxes[k], scores[k], labels[k] = boxes[k][keep], scores[k][keep], labels[k][keep]
        with profile_stage(profile, "mask_head"):
            mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, shapes)))
            masks = maskrcnn_inference(mask_logits, labels)
    out = []
    for k, (in_size, size) in enumerate(zip(shapes, sizes, strict=True)):
        kept = resize_boxes(boxes[k].float(), in_size, size).cpu()
        rles = paste_masks_to_rles(
            masks[k].float().cpu(), kept, size, threshold=mask_threshold, profile=profile
        )
        out.append(
            Instances(
                image_size=size,
                boxes=kept.numpy(),
                labels=labels[k].cpu().numpy(),
                scores=scores[k].float().cpu().numpy(),
                rles=rles,
            )
        )
    return out


class MaskRCNNSegmenter:
    """Wraps a torchvision Mask R-CNN: numpy image in, :class:`Instances` (original size, RLE masks) out.

    Parameters
    ----------
    model : torchvision MaskRCNN
    mask_threshold : float
        Probability above which a mask pixel is foreground.
    score_threshold : float
        Detections below this score are dropped (COCO AP wants low-score detections too: keep it low).
    device : str
    precision : str
        ``fp32`` or ``bf16`` (bfloat16 autocast + channels_last; :func:`prepare_model`).
    proposals : int or None
        RPN proposals per image (``None``: the model's own; :func:`proposals_for` resolves ``auto``).
    class_thresholds : dict or None
        Label -> score threshold below which that label's detections are dropped before the mask head.
    """

    name = "maskrcnn"

    def __init__(
        self,
        model,
        *,
        mask_threshold: float = 0.5,
        score_threshold: float = 0.0,
        device: str = "cpu",
        precision: str = "fp32",
        proposals: int | None = None,
        class_thresholds: Mapping[int, float] | None = None,
    ):
        self.model = prepare_model(model.to(device), precision)
        self.mask_threshold = mask_threshold
        self.score_threshold = score_threshold
        self.device = device
        self.precision = precision
        self.proposals = proposals
        self.class_thresholds = dict(class_thresholds or {})

    @torch.inference_mode()
    def predict_batch(
        self, images: list[np.ndarray], *, profile: StageTimer | None = None
    ) -> list[Instances]:
        with profile_stage(profile, "preprocess"):
            tensors = [image_to_tensor(im, self.device) for im in images]
        return predict_instances(
            self.model,
            tensors,
            mask_threshold=self.mask_threshold,
            score_threshold=self.score_threshold,
            class_thresholds=self.class_thresholds or None,
            proposals=self.proposals,
            precision=self.precision,
            profile=profile,
        )

    def __call__(self, image: np.ndarray) -> Instances:
        return self.predict_batch([image])[0]

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, proposals: int | str | None = None, **kwargs
    ) -> tuple[MaskRCNNSegmenter, dict]:
        """The trained network of a segbench checkpoint (:func:`segbench.models.checkpoint.load_model`)
        as a segmenter; returns it and the checkpoint's card (classes, categories, architecture).
        ``proposals`` (``auto``, a number or ``None``) is resolved by :func:`proposals_for` with the card's
        ``max_objects_per_image`` when it records one."""
        from segbench.models.checkpoint import load_model

        model, card, _ = load_model(path)
        kwargs.setdefault("mask_threshold", float(card.get("mask_threshold", 0.5)))
        kwargs["proposals"] = proposals_for(model, proposals, max_objects=card.get("max_objects_per_image"))
        return cls(model, **kwargs), card
