"""A trained Mask R-CNN as a *segmenter* (``image (H, W, 3) uint8 -> Instances``)."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from segbench.types import Instances, masks_to_rles

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
    mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *, threshold: float = 0.5
) -> list[dict]:
    """Paste Mask R-CNN's ``[N, 1, M, M]`` mask probabilities into their boxes and run-length encode them.

    Gives the same masks as torchvision's ``paste_masks_in_image`` followed by a threshold (same box
    expansion and bilinear resize), but each mask is resized to its box only and written into one reused
    full-size buffer, so memory does not grow with the number of detections and no float image per
    detection is made.
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
    for k in range(n):
        x0b, y0b, x1b, y1b = eboxes[k]
        bw, bh = max(x1b - x0b + 1, 1), max(y1b - y0b + 1, 1)
        m = torch.nn.functional.interpolate(
            masks[k : k + 1], size=(bh, bw), mode="bilinear", align_corners=False
        )
        x0, x1, y0, y1 = max(x0b, 0), min(x1b + 1, w), max(y0b, 0), min(y1b + 1, h)
        if x1 <= x0 or y1 <= y0:
            rles.append(mask_utils.encode(buf[:, :, None])[0])
            continue
        region = (m[0, 0, y0 - y0b : y1 - y0b, x0 - x0b : x1 - x0b] > threshold).numpy().astype(np.uint8)
        buf[y0:y1, x0:x1] = region
        rles.append(mask_utils.encode(buf[:, :, None])[0])
        buf[y0:y1, x0:x1] = 0
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


@torch.inference_mode()
def predict_instances(
    model, images: list[torch.Tensor], *, mask_threshold: float = 0.5, score_threshold: float = 0.0
) -> list[Instances]:
    """Run a torchvision Mask R-CNN (eval mode) on ``FloatTensor[3, H, W]`` images; :class:`Instances` at
    the original sizes with RLE masks.

    The same network computation as ``model(images)``; only the last steps differ: boxes scoring below
    ``score_threshold`` are dropped *before* the mask head (the RoI heads' own ``score_thresh`` is raised
    to it for the call), so no mask is computed for a detection that would be thrown away — the boxes,
    scores and masks of the detections kept are the same (a box below the threshold can suppress in NMS
    only boxes below it); and masks are pasted and encoded by :func:`paste_masks_to_rles` instead of being
    pasted as ``N`` full-size float images.
    """
    from torchvision.models.detection.transform import resize_boxes

    sizes = [tuple(int(v) for v in im.shape[-2:]) for im in images]
    image_list, _ = model.transform(list(images))
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    heads = model.roi_heads
    own = heads.score_thresh
    heads.score_thresh = max(own, float(score_threshold))
    try:
        detections, _ = heads(features, proposals, image_list.image_sizes)
    finally:
        heads.score_thresh = own
    out = []
    for det, in_size, size in zip(detections, image_list.image_sizes, sizes, strict=True):
        boxes = resize_boxes(det["boxes"], in_size, size)
        rles = paste_masks_to_rles(
            det["masks"].float().cpu(), boxes.float().cpu(), size, threshold=mask_threshold
        )
        out.append(
            Instances(
                image_size=size,
                boxes=boxes.float().cpu().numpy(),
                labels=det["labels"].cpu().numpy(),
                scores=det["scores"].float().cpu().numpy(),
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
    """

    name = "maskrcnn"

    def __init__(
        self, model, *, mask_threshold: float = 0.5, score_threshold: float = 0.0, device: str = "cpu"
    ):
        self.model = model.eval().to(device)
        self.mask_threshold = mask_threshold
        self.score_threshold = score_threshold
        self.device = device

    @torch.inference_mode()
    def predict_batch(self, images: list[np.ndarray]) -> list[Instances]:
        tensors = [image_to_tensor(im, self.device) for im in images]
        return predict_instances(
            self.model, tensors, mask_threshold=self.mask_threshold, score_threshold=self.score_threshold
        )

    def __call__(self, image: np.ndarray) -> Instances:
        return self.predict_batch([image])[0]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> tuple[MaskRCNNSegmenter, dict]:
        """The trained network of a segbench checkpoint (:func:`segbench.models.checkpoint.load_model`)
        as a segmenter; returns it and the checkpoint's card (classes, categories, architecture)."""
        from segbench.models.checkpoint import load_model

        model, card, _ = load_model(path)
        kwargs.setdefault("mask_threshold", float(card.get("mask_threshold", 0.5)))
        return cls(model, **kwargs), card
