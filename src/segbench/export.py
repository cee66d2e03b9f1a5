"""Checkpoint -> shippable model files (state_dict, TorchScript, ONNX), each checked against PyTorch.

``segbench export ckpt_path=FILE formats=[state_dict,torchscript,onnx] out=DIR`` writes into ``out``:

* ``model.json`` — the model card: ``build`` (every keyword argument of
  :func:`segbench.models.maskrcnn.build_maskrcnn`, ``num_classes`` included, ``weights`` null), class
  names, the COCO categories and the label -> category id map, the input contract (image min/max size,
  normalisation mean/std), the mask threshold, and which files passed their check;
* ``model.pt`` — ``torch.save(model.state_dict())``: tensors only, loads with ``weights_only=True``
  into ``build_maskrcnn(**card["build"])`` (see :func:`load_exported_state_dict`);
* ``model.torchscript.pt`` — ``torch.jit.script(model)``; called with a list of ``FloatTensor[3, H, W]``
  it returns ``(losses, detections)`` (scripted torchvision detection models always do);
* ``model.onnx`` — the legacy TorchScript-based exporter (``dynamo=False``; the dynamo exporter cannot
  export torchvision's Mask R-CNN: ``torch.export`` stops on the data-dependent shapes in ``batched_nms``).
  One image per call: input ``image`` ``float32[3, H, W]`` in 0..1 (H, W dynamic), outputs ``boxes``
  ``[N, 4]``, ``labels`` ``[N]``, ``scores`` ``[N]``, ``masks`` ``[N, 1, H, W]`` probabilities;
* ``export_report.json`` — the parity check.

Two torchvision behaviours are corrected before exporting, so that the exports give the checkpoint's
eager-PyTorch results for every input size: the scripted / traced resize computes its scale in float32
and often resizes to one pixel less than eager PyTorch (:class:`~segbench.models.transforms.ExactResizeTransform` computes it in
float64), and the RoI poolers' feature-map scales, which torchvision infers from the first image it sees
and then keeps, are set from an exact input (:func:`~segbench.models.transforms.fix_roi_pool_scales`).

Each file is written under a temporary name, loaded back by its own runtime and compared with the
PyTorch model on a few images (a blank one, one with many objects, a noise image, each of another size,
plus any ``check_images``): detections are matched one to one, and the largest box, score and mask
differences and the milliseconds per image are reported. Only a file that passes is renamed into place;
a format that fails to export or to match is reported as failed and leaves no file behind.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from scipy.optimize import linear_sum_assignment
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from segbench.io import to_jsonable
from segbench.models.checkpoint import build_from_state_dict, load_model, read_weights
from segbench.models.transforms import ExactResizeTransform
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

__all__ = [
    "CARD_FILE",
    "FILES",
    "FORMATS",
    "REPORT_FILE",
    "OnnxRuntime",
    "TorchRuntime",
    "TorchScriptRuntime",
    "Tolerances",
    "compare_outputs",
    "exportable_model",
    "export_checkpoint",
    "format_report_table",
    "load_exported_model",
    "load_exported_state_dict",
    "read_model_card",
]

#: Export formats, in the order they are written.
FORMATS: tuple[str, ...] = ("state_dict", "torchscript", "onnx")
#: File written for each format (inside ``out``).
FILES: dict[str, str] = {
    "state_dict": "model.pt",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
}
CARD_FILE = "model.json"
REPORT_FILE = "export_report.json"
CARD_FORMAT = "segbench-model"
#: Name of the model card embedded in TorchScript (extra file) and ONNX (metadata) exports.
EMBEDDED_CARD = "segbench_model.json"
ONNX_INPUT = "image"
ONNX_OUTPUTS: tuple[str, ...] = ("boxes", "labels", "scores", "masks")
MIN_OPSET = 17
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth", ".torchscript")

Output = dict[str, np.ndarray]  # boxes (N,4) f32, labels (N,) i64, scores (N,) f32, masks (N,1,H,W) f32


@dataclass(frozen=True)
class Tolerances:
    """Largest differences to the PyTorch model that an export may show and still pass.

    box : pixels (any box coordinate); score : absolute; mask : absolute mask probability (any pixel).
    """

    box: float = 0.1
    score: float = 1e-3
    mask: float = 0.02

    def __post_init__(self) -> None:
        for name in ("box", "score", "mask"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise SegbenchError(f"tolerances.{name} must be a number >= 0, got {v!r}")


# --------------------------------------------------------------------------------------------------
# The model and its card
# --------------------------------------------------------------------------------------------------
def model_card(model: torch.nn.Module, meta: dict, build: dict, *, source: str) -> dict:
    """The ``model.json`` content for a model rebuilt from checkpoint metadata ``meta``."""

    t = model.transform
    min_size = list(t.min_size) if isinstance(t.min_size, (list, tuple)) else [t.min_size]
    categories = [dict(c) for c in meta.get("categories") or []]
    class_names = list(meta.get("class_names") or [c.get("name") for c in categories])
    label_to_cat_id = {int(k): int(v) for k, v in (meta.get("label_to_cat_id") or {}).items()}
    if not label_to_cat_id:
        label_to_cat_id = {i + 1: i + 1 for i in range(len(class_names))}
    return to_jsonable(
        {
            "format": CARD_FORMAT,
            "version": 1,
            "architecture": "maskrcnn",
            "backbone": build.get("backbone"),
            "build": build,
            "num_classes": int(meta["num_classes"]),
            "class_names": class_names,
            "categories": categories,
            "label_to_cat_id": {str(k): v for k, v in label_to_cat_id.items()},
            "image": {
                "input": "RGB float32 [3, H, W] in 0..1 (uint8 / 255); the model normalises and resizes itself",
                "min_size": min_size,
                "max_size": int(t.max_size),
                "keep_size": bool(build.get("keep_size", False)),
                "mean": [float(v) for v in t.image_mean],
                "std": [float(v) for v in t.image_std],
            },
            "mask_threshold": float(meta.get("mask_threshold", 0.5)),
            "score_thresholds": meta.get("score_thresholds"),  # per class, calibrated on val after training
            "box_score_thresh": float(model.roi_heads.score_thresh),
            "box_detections_per_img": int(model.roi_heads.detections_per_img),
            "trained_from": (meta.get("net") or {}).get("weights"),
            "source_checkpoint": source,
            "files": {},
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        }
    )


def load_exported_state_dict(directory: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Load ``model.pt`` + ``model.json`` written by ``segbench export formats=[state_dict]``.

    Returns the torchvision ``MaskRCNN`` in eval mode and the model card (class names, categories...).
    """
    directory = Path(directory)
    card = read_model_card(directory / CARD_FILE)
    weights = directory / FILES["state_dict"]
    if not weights.is_file():
        raise SegbenchError(f"{weights} not found; export it with `segbench export formats=[state_dict]`")
    return _model_from_state_dict_file(card, weights), card


def _model_from_state_dict_file(card: dict, weights: Path) -> torch.nn.Module:
    return build_from_state_dict(card["build"], read_weights(weights, key="model"), where=str(weights))


def read_model_card(path: str | os.PathLike) -> dict:
    """Read a ``model.json`` written by ``segbench export``."""
    path = Path(path)
    if not path.is_file():
        raise SegbenchError(
            f"model card {path} not found (it is written by `segbench export` beside the model)"
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SegbenchError(f"{path} is not a segbench model card: {e}") from None
    return _check_card(card, str(path))


def _check_card(card, where: str) -> dict:
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or "build" not in card:
        raise SegbenchError(f"{where} is not a segbench model card (written by `segbench export`)")
    return card


# --------------------------------------------------------------------------------------------------
# The resize step, made to agree with eager PyTorch
# --------------------------------------------------------------------------------------------------
def exportable_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (eval mode) whose resize step is :class:`ExactResizeTransform`.

    Models with another transform (``keep_size``'s ``NativeSizeTransform``, a ``fixed_size``) are
    copied unchanged.
    """
    m = copy.deepcopy(model).eval()
    t = m.transform
    if type(t) is GeneralizedRCNNTransform and t.fixed_size is None and not getattr(t, "_skip_resize", False):
        m.transform = ExactResizeTransform(
            t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible
        )
    return m


# --------------------------------------------------------------------------------------------------
# Runtimes: one image tensor in, numpy detections out
# --------------------------------------------------------------------------------------------------
def _to_numpy(det: dict) -> Output:
    return {k: det[k].detach().cpu().numpy() for k in ONNX_OUTPUTS}


class TorchRuntime:
    """The PyTorch (eager) model: the reference of every check."""

    name = "pytorch"
    embedded_card = None

    def __init__(self, model: torch.nn.Module, *, device: str = "cpu") -> None:
        self.model = model.eval()
        self.device = device

    @torch.inference_mode()
    def run_batch(self, images: Sequence[torch.Tensor]) -> list[Output]:
        return [_to_numpy(d) for d in self.model([im.to(self.device) for im in images])]

    def __call__(self, image: torch.Tensor) -> Output:
        return self.run_batch([image])[0]


class TorchScriptRuntime(TorchRuntime):
    """A ``torch.jit.script`` export. Needs torch and torchvision (which registers the ``nms`` and
    ``roi_align`` ops the scripted graph calls)."""

    name = "torchscript"

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu") -> None:
        # torchvision (imported above) registers the torchvision::nms / roi_align ops the graph calls
        extra = {EMBEDDED_CARD: ""}
        self.model = _quiet(torch.jit.load, str(path), map_location=device, _extra_files=extra)
        self.model.eval()
        self.device = device
        self.embedded_card = json.loads(extra[EMBEDDED_CARD]) if extra[EMBEDDED_CARD] else None

    @torch.inference_mode()
    def run_batch(self, images: Sequence[torch.Tensor]) -> list[Output]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="RCNN always returns")
            out = self.model([im.to(self.device) for im in images])
        if isinstance(out, tuple):  # scripted detection models return (losses, detections)
            out = out[1]
        return [_to_numpy(d) for d in out]


class OnnxRuntime:
    """An ONNX export run by onnxruntime; one image per call (the graph's input is one ``[3, H, W]``)."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike, *, providers: Sequence[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SegbenchError(
                "running an ONNX model needs onnxruntime: pip install 'segbench[onnx]'"
            ) from None
        self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.embedded_card = json.loads(meta[EMBEDDED_CARD]) if EMBEDDED_CARD in meta else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, image: torch.Tensor) -> Output:
        x = image.detach().cpu().float().numpy()
        values = self.session.run(None, {ONNX_INPUT: x})
        return dict(zip(self.output_names, values, strict=True))

    def run_batch(self, images: Sequence[torch.Tensor]) -> list[Output]:
        return [self(im) for im in images]


def load_exported_model(path: str | os.PathLike, *, device: str = "cpu"):
    """Open a TorchScript (``.pt``/``.ts``), ONNX (``.onnx``) or state_dict (``model.pt``) export and its
    model card.

    The card is ``model.json`` beside the file when there is one, else the copy embedded in the file
    (TorchScript, ONNX). A state_dict export is recognised by the card beside it.

    Returns
    -------
    runtime, card
        ``runtime(image FloatTensor[3, H, W] in 0..1) -> {"boxes", "labels", "scores", "masks"}`` (numpy)
        and ``runtime.run_batch(list of images)``.
    """
    path = Path(path)
    if not path.is_file():
        raise SegbenchError(f"exported model not found: {path}")
    suffix = path.suffix.lower()
    sidecar = path.parent / CARD_FILE
    if sidecar.is_file() and suffix != ".onnx":
        card = read_model_card(sidecar)
        if card.get("files", {}).get("state_dict") == path.name:
            try:
                model = _model_from_state_dict_file(card, path)
            except (RuntimeError, OSError, pickle.UnpicklingError) as e:
                raise SegbenchError(
                    f"cannot load state_dict export {path}: {str(e).splitlines()[0][:300]}"
                ) from None
            runtime = TorchRuntime(model.to(device), device=device)
            runtime.name = "state_dict"
            return runtime, card
    try:
        if suffix == ".onnx":
            runtime = OnnxRuntime(
                path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if device != "cpu" else None
            )
        elif suffix in TORCHSCRIPT_SUFFIXES:
            runtime = TorchScriptRuntime(path, device=device)
        else:
            raise SegbenchError(
                f"{path}: unknown export type {suffix!r}; pass a TorchScript (.pt, .ts) or ONNX (.onnx) file "
                "written by `segbench export` (for a training checkpoint use ckpt_path=)"
            )
    except SegbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.jit / onnxruntime raise many kinds for bad files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SegbenchError(f"cannot load exported model {path}: {msg[:300]}") from None
    if sidecar.is_file():
        card = read_model_card(sidecar)
    elif runtime.embedded_card is not None:
        card = _check_card(runtime.embedded_card, f"the model card embedded in {path}")
    else:
        raise SegbenchError(f"no {CARD_FILE} beside {path} and none embedded in it: class names are unknown")
    return runtime, card


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
def _quiet(fn: Callable, *args, **kwargs):
    """Run ``fn`` with the exporters' warnings (tracer warnings, deprecations) sent to the debug log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    seen = set()
    for w in caught:
        text = str(w.message).splitlines()[0]
        if text not in seen:
            seen.add(text)
            log.debug("%s: %s", w.category.__name__, text)
    return result


def write_state_dict(model: torch.nn.Module, path: Path, card: dict) -> Callable[[], object]:
    """``torch.save(model.state_dict())``; returns a loader that rebuilds the model from the file."""
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, path)
    return lambda: TorchRuntime(_model_from_state_dict_file(card, path))


def write_torchscript(model: torch.nn.Module, path: Path, card: dict) -> Callable[[], object]:
    """``torch.jit.script(model).save(path)`` with the model card embedded as an extra file."""
    scripted = _quiet(torch.jit.script, model)
    scripted.save(str(path), _extra_files={EMBEDDED_CARD: json.dumps(card)})
    return lambda: TorchScriptRuntime(path)


def write_onnx(
    model: torch.nn.Module, path: Path, card: dict, *, example: torch.Tensor, opset: int
) -> Callable[[], object]:
    """Export with the legacy TorchScript-based ONNX exporter (one ``[3, H, W]`` image, H/W dynamic)."""
    try:
        import onnx
    except ImportError:
        raise SegbenchError("ONNX export needs onnx and onnxruntime: pip install 'segbench[onnx]'") from None
    dynamic = {ONNX_INPUT: {1: "height", 2: "width"}, "boxes": {0: "detections"}, "labels": {0: "detections"}}
    dynamic["scores"] = {0: "detections"}
    dynamic["masks"] = {0: "detections", 2: "height", 3: "width"}
    _quiet(
        torch.onnx.export,
        model,
        ([example],),
        str(path),
        opset_version=opset,
        dynamo=False,
        input_names=[ONNX_INPUT],
        output_names=list(ONNX_OUTPUTS),
        dynamic_axes=dynamic,
        do_constant_folding=True,
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = EMBEDDED_CARD, json.dumps(card)
    onnx.save(proto, str(path))
    return lambda: OnnxRuntime(path)


# --------------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------------
def rounding_sensitive_size(size: int, min_size: int, max_size: int) -> tuple[int, int] | None:
    """An image size near ``(3/4 size, size)`` that torchvision's scripted/traced resize (float32 scale)
    resizes differently from eager PyTorch (float64 scale), or None if there is none nearby."""

    def resized(h: int, w: int, dtype) -> tuple[int, int]:
        scale = min(dtype(min_size) / dtype(min(h, w)), dtype(max_size) / dtype(max(h, w)))
        return int(np.floor(h * float(scale))), int(np.floor(w * float(scale)))

    h0 = max(size * 3 // 4, 8)
    for h in range(h0, h0 + 64):
        for w in range(size, size + 16):
            if resized(h, w, np.float32) != resized(h, w, np.float64):
                return h, w
    return None


def default_check_images(
    size: int, extra: Sequence[str | os.PathLike] = (), *, noise_size: tuple[int, int] | None = None
) -> list[tuple[str, torch.Tensor]]:
    """The check images: blank (``size x 5/4 size``, usually no detection), synthetic shapes with many
    objects (``size x size``), uniform noise (``noise_size``, default ``3/4 size x size``), then the
    ``extra`` image files."""
    from segbench.data.coco import read_image
    from segbench.data.synthetic import SynthConfig, make_image
    from segbench.models.segmenter import image_to_tensor

    s = max(int(size), 32)
    radius = max(s // 24, 4)
    cfg = SynthConfig(image_size=s, max_objects=24, min_radius=radius, max_radius=2 * radius, seed=7)
    candidates = [make_image(i, cfg) for i in range(16)]
    shapes = max(candidates, key=lambda c: len(c[2]))[0]  # the most crowded of a few draws
    nh, nw = noise_size or (s * 3 // 4, s)
    noise = np.random.default_rng(0).integers(0, 256, (nh, nw, 3), dtype=np.uint8)
    images = [
        ("blank", np.zeros((s, s * 5 // 4, 3), np.uint8)),
        ("shapes", shapes),
        ("noise", noise),
    ]
    images += [(Path(p).name, read_image(p)) for p in extra]
    return [(name, image_to_tensor(im)) for name, im in images]


def compare_outputs(
    ref: Output,
    out: Output,
    *,
    score_cut: float = 0.0,
    max_detections: int | None = None,
    pair_gate: float = 1.0,
    score_margin: float = 1e-3,
) -> dict:
    """Match two runtimes' detections of one image one to one and measure their differences.

    Detections are paired by :func:`scipy.optimize.linear_sum_assignment` on the largest box coordinate
    difference, so that detections whose scores tie and come in another order still pair up; a pair
    must have the same label and boxes within ``pair_gate`` pixels. A detection left without a partner
    is *borderline* when its score is within ``score_margin`` of a cut that can keep it in one runtime and drop
    it in the other (``score_cut``, the model's ``box_score_thresh``; or the other runtime's lowest
    score when that one kept ``max_detections``), else *unmatched*.

    Returns
    -------
    dict
        ``detections_ref``, ``detections``, ``box`` (px), ``score``, ``mask`` (probability) — the largest
        differences over pairs — ``pairs``, ``unmatched`` and ``borderline``.
    """
    na, nb = len(ref["scores"]), len(out["scores"])
    res = {"detections_ref": na, "detections": nb, "box": 0.0, "score": 0.0, "mask": 0.0}
    rows = cols = np.zeros(0, np.int64)
    if na and nb:
        a, b = ref["boxes"].astype(np.float64), out["boxes"].astype(np.float64)
        cost = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
        cost += 1e6 * (ref["labels"][:, None] != out["labels"][None, :])
        rows, cols = linear_sum_assignment(cost)
        good = cost[rows, cols] <= pair_gate
        rows, cols = rows[good], cols[good]
    if len(rows):
        res["box"] = float(np.abs(ref["boxes"][rows].astype(np.float64) - out["boxes"][cols]).max())
        res["score"] = float(np.abs(ref["scores"][rows].astype(np.float64) - out["scores"][cols]).max())
        mask = 0.0
        for i, j in zip(rows, cols, strict=True):
            mask = max(mask, float(np.abs(ref["masks"][i].astype(np.float32) - out["masks"][j]).max()))
        res["mask"] = mask
    res.update(pairs=len(rows), unmatched=0, borderline=0)
    for side, other, used in ((ref, out, rows), (out, ref, cols)):
        extra = np.setdiff1d(np.arange(len(side["scores"])), used)
        if len(extra) == 0:
            continue
        cuts = [score_cut]
        if max_detections is not None and len(other["scores"]) >= max_detections:
            cuts.append(float(other["scores"].min()))
        near = np.array([min(abs(float(side["scores"][k]) - c) for c in cuts) <= score_margin for k in extra])
        res["borderline"] += int(near.sum())
        res["unmatched"] += int((~near).sum())
    return res


def _time_runtime(runtime, images: list[tuple[str, torch.Tensor]], runs: int) -> tuple[list[Output], float]:
    """Outputs on every image and the mean milliseconds per image (after one warm-up call)."""
    runtime(images[0][1])
    outputs, seconds = [], 0.0
    for _, im in images:
        for _ in range(max(runs, 1)):
            t0 = time.perf_counter()
            o = runtime(im)
            seconds += time.perf_counter() - t0
        outputs.append(o)
    return outputs, 1000 * seconds / (len(images) * max(runs, 1))


def check_runtime(
    runtime,
    images: list[tuple[str, torch.Tensor]],
    refs: list[Output],
    tol: Tolerances,
    *,
    score_cut: float,
    max_detections: int,
    timing_runs: int = 1,
) -> dict:
    """Compare ``runtime`` with the reference outputs on ``images``; ``passed`` and the worst differences."""
    outputs, ms = _time_runtime(runtime, images, timing_runs)
    per_image = []
    for (name, _), r, o in zip(images, refs, outputs, strict=True):
        c = compare_outputs(
            r,
            o,
            score_cut=score_cut,
            max_detections=max_detections,
            pair_gate=max(1.0, 10 * tol.box),
            score_margin=max(tol.score, 1e-6),
        )
        per_image.append({"image": name, **c})
    worst = {k: float(np.max([p[k] for p in per_image])) for k in ("box", "score", "mask")}  # NaN stays NaN
    problems = [
        f"{k} difference {worst[k]:.3g} > tolerance {getattr(tol, k):.3g}"
        for k in ("box", "score", "mask")
        if not worst[k] <= getattr(tol, k)  # also catches NaN
    ]
    for p in per_image:
        if p["unmatched"]:
            problems.append(
                f"image {p['image']}: {p['unmatched']} detection(s) without a partner of the same label and "
                f"box ({p['detections']} detections vs {p['detections_ref']} in PyTorch)"
            )
    return {
        "passed": not problems,
        "problems": problems,
        "max_box_diff": worst["box"],
        "max_score_diff": worst["score"],
        "max_mask_diff": worst["mask"],
        "ms_per_image": ms,
        "images": per_image,
    }


# --------------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------------
def _check_formats(formats: str | Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise SegbenchError(
            f"unknown export format(s) {bad or formats}; choose from {', '.join(FORMATS)}, "
            "e.g. formats=[state_dict,onnx]"
        )
    return formats


def _discard(tmp: Path, final: Path, *, keep_failed: bool) -> str | None:
    """Remove (or set aside as ``*.failed``) a file that failed, and any older file of that name."""
    if final.exists():
        final.unlink()
    if not tmp.exists():
        return None
    if keep_failed:
        failed = final.with_name(final.name + ".failed")
        os.replace(tmp, failed)
        return failed.name
    tmp.unlink()
    return None


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    formats: str | Sequence[str] = FORMATS,
    tolerances: Tolerances | None = None,
    opset: int = MIN_OPSET,
    check_size: int | None = None,
    check_images: Sequence[str | os.PathLike] = (),
    timing_runs: int = 1,
    keep_failed: bool = False,
) -> dict:
    """Export a segbench checkpoint to ``formats`` in ``out_dir`` and check each file against PyTorch.

    Parameters
    ----------
    ckpt_path
        A checkpoint written by ``segbench train``.
    out_dir
        Destination folder (created); ``model.json``, the model files and ``export_report.json``.
    formats
        Any of ``"state_dict"``, ``"torchscript"``, ``"onnx"``.
    tolerances
        Largest box / score / mask differences that pass (:class:`Tolerances`).
    opset
        ONNX opset (>= 17).
    check_size
        Side of the generated check images; ``None``: the model's ``min_size`` up to 320 (the model
        resizes its input to ``min_size`` anyway) or 256 for ``keep_size`` models.
    check_images
        Extra image files to check on (your own data).
    timing_runs
        Timed calls per image and runtime (after one warm-up call).
    keep_failed
        Keep a file that failed its check as ``<name>.failed`` (for debugging) instead of deleting it.

    Returns
    -------
    dict
        The report written to ``export_report.json``; ``report["ok"]`` is True when every format passed.
    """
    formats = _check_formats(formats)
    tol = tolerances or Tolerances()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise SegbenchError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    from segbench.io import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, meta, build = load_model(ckpt_path)
    card = model_card(model, meta, build, source=str(ckpt_path))
    if check_size is None:  # the model resizes to min_size itself: smaller inputs only make smaller masks
        check_size = 256 if card["image"]["keep_size"] else min(int(card["image"]["min_size"][0]), 320)
    noise_size = None
    if not card["image"]["keep_size"]:  # a noise image whose resize float32 arithmetic gets wrong
        img = card["image"]
        noise_size = rounding_sensitive_size(check_size, img["min_size"][-1], img["max_size"])
    images = default_check_images(check_size, check_images, noise_size=noise_size)
    score_cut = card["box_score_thresh"]
    max_dets = card["box_detections_per_img"]

    reference = TorchRuntime(model)
    refs, ref_ms = _time_runtime(reference, images, timing_runs)
    report: dict = {
        "checkpoint": str(ckpt_path),
        "out": str(out),
        "versions": card["versions"],
        "opset": opset,
        "tolerances": asdict(tol),
        "check_images": [
            {"image": n, "height": int(t.shape[1]), "width": int(t.shape[2])} for n, t in images
        ],
        "reference": {
            "runtime": "pytorch",
            "ms_per_image": ref_ms,
            "detections": {n: len(r["scores"]) for (n, _), r in zip(images, refs, strict=True)},
        },
        "formats": {},
    }
    if not any(len(r["scores"]) == 0 for r in refs):
        log.info("the model detects something on every check image: the no-detection case is not exercised")
    if not any(len(r["scores"]) >= 10 for r in refs):
        log.info("no check image gives 10 or more detections: pass check_images=[...] with crowded images")

    for fmt in formats:
        final = out / FILES[fmt]
        tmp = final.with_name(final.name + ".partial")
        entry: dict = {"status": "failed", "file": None, "error": None}
        t0 = time.perf_counter()
        try:
            if fmt == "state_dict":
                opener = write_state_dict(model, tmp, card)
            elif fmt == "torchscript":
                opener = write_torchscript(exportable_model(model), tmp, card)
            else:
                opener = write_onnx(exportable_model(model), tmp, card, example=images[1][1], opset=opset)
            entry["export_seconds"] = time.perf_counter() - t0
            runtime = opener()
            result = check_runtime(
                runtime,
                images,
                refs,
                tol,
                score_cut=score_cut,
                max_detections=max_dets,
                timing_runs=timing_runs,
            )
            entry.update(result)
            if result["passed"]:
                os.replace(tmp, final)
                entry.update(status="ok", file=final.name)
                card["files"][fmt] = final.name
            else:
                entry["error"] = "; ".join(result["problems"])
        except Exception as e:  # noqa: BLE001 - one format failing must not stop the others
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            entry["error"] = f"{type(e).__name__}: {msg[:500]}"
            log.debug("export %s failed", fmt, exc_info=True)
        if entry["status"] != "ok":
            kept = _discard(tmp, final, keep_failed=keep_failed)
            entry["kept_as"] = kept
            log.error("%s export failed: %s", fmt, entry["error"])
        report["formats"][fmt] = entry

    report["ok"] = all(e["status"] == "ok" for e in report["formats"].values())
    write_json(out / CARD_FILE, card)
    write_json(out / REPORT_FILE, report)
    return report


def format_report_table(report: dict) -> str:
    """The parity check as a plain-text table (one row per runtime)."""
    names = [c["image"] for c in report["check_images"]]
    head = (
        f"{'format':<12}{'status':<8}{'file':<22}{'max|dbox| px':>13}{'max|dscore|':>13}{'max|dmask|':>12}"
        f"{'ms/img':>9}  detections ({'/'.join(names)})"
    )
    ref = report["reference"]
    rows = [head, "-" * len(head)]
    dets = "/".join(str(ref["detections"][n]) for n in names)
    rows.append(
        f"{'pytorch':<12}{'ref':<8}{'-':<22}{'-':>13}{'-':>13}{'-':>12}{ref['ms_per_image']:>9.1f}  {dets}"
    )

    def g(v):
        return "-" if v is None else f"{v:.2g}"

    for fmt, e in report["formats"].items():
        per = {p["image"]: p["detections"] for p in e.get("images", [])}
        dets = "/".join(str(per.get(n, "-")) for n in names)
        ms = e.get("ms_per_image")
        rows.append(
            f"{fmt:<12}{e['status']:<8}{(e['file'] or '-'):<22}{g(e.get('max_box_diff')):>13}"
            f"{g(e.get('max_score_diff')):>13}{g(e.get('max_mask_diff')):>12}"
            f"{('-' if ms is None else f'{ms:.1f}'):>9}  {dets}"
        )
    for fmt, e in report["formats"].items():
        if e["status"] != "ok":
            rows.append(f"{fmt} FAILED: {e['error']}")
    return "\n".join(rows)
