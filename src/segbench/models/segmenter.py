"""A trained Mask R-CNN as a *segmenter* (``image (H, W, 3) uint8 -> Instances``), and checkpoint loading."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from segbench.types import Instances, SegbenchError, masks_to_rles

log = logging.getLogger(__name__)


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


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a segbench checkpoint with ``weights_only=True``; clear errors for missing or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise SegbenchError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise SegbenchError(
                f"refusing to load {path}: it contains Python objects whose unpickling would run code "
                f"({msg[:200]}). Only load checkpoints you trust; segbench loads tensors only."
            ) from None
        raise SegbenchError(f"cannot read checkpoint {path}: {msg[:300]}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise SegbenchError(
            f"{path} is not a segbench checkpoint (no 'state_dict'); for plain weights use model.weights="
        )
    if "segbench" not in ckpt:
        raise SegbenchError(
            f"{path} has no segbench metadata (architecture, classes); it was not written by `segbench train`. "
            "Pass it as model.weights=FILE to fine-tune from it instead."
        )
    return ckpt


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
        outputs = self.model(tensors)
        out = []
        for im, o in zip(images, outputs, strict=True):
            if self.score_threshold > 0:
                keep = o["scores"] >= self.score_threshold
                o = {k: v[keep] for k, v in o.items()}
            out.append(output_to_instances(o, im.shape[:2], mask_threshold=self.mask_threshold))
        return out

    def __call__(self, image: np.ndarray) -> Instances:
        return self.predict_batch([image])[0]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> tuple[MaskRCNNSegmenter, dict]:
        """Build the model recorded in a segbench checkpoint and load its weights.

        Returns the segmenter and the checkpoint's metadata (classes, categories, architecture).
        """
        from segbench.models.maskrcnn import build_maskrcnn

        ckpt = load_checkpoint_file(path)
        meta = ckpt["segbench"]
        net_kwargs = dict(meta["net"])
        net_kwargs["weights"] = None
        model = build_maskrcnn(num_classes=meta["num_classes"], **net_kwargs)
        sd = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise SegbenchError(
                f"{path}: weights do not fit the recorded architecture {net_kwargs.get('backbone')} "
                f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
            )
        return cls(model, **kwargs), meta
