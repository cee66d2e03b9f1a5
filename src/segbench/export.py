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
* ``model.xml`` + ``model.bin`` — OpenVINO IR (``formats=[openvino]``), converted by
  ``openvino.convert_model`` from the ONNX export (whose graph already has the exact resize and the fixed
  RoI scales; the PyTorch frontend would have to trace torchvision's Python control flow again), weights
  kept float32 and run with ``INFERENCE_PRECISION_HINT=f32``: the same computation as PyTorch, with the
  ONNX file's input and outputs;
* ``model_int8.xml`` + ``model_int8.bin`` — that OpenVINO model quantised to INT8 by NNCF post-training
  quantisation (``formats=[openvino_int8]``, ``nncf.quantize``), calibrated on ``calibration_images``
  train images of the checkpoint's data (or the images of ``calibration_data``), each given exactly as
  the runtime gets it (``FloatTensor[3, H, W]`` in 0..1); ``int8_scope=all`` quantises every convolution
  and matrix product, ``int8_scope=backbone`` only the backbone + FPN (used, and reported, when
  quantising the whole graph raises);
* ``bf16`` — no file: the PyTorch model run with ``precision=bf16`` (bfloat16 autocast + channels_last,
  :func:`segbench.models.segmenter.predict_instances`); its entry says whether ``segbench predict
  ckpt_path=... precision=bf16`` keeps the checkpoint's accuracy;
* ``export_report.json`` — the parity and accuracy checks.

Two torchvision behaviours are corrected before exporting, so that the exports give the checkpoint's
eager-PyTorch results for every input size: the scripted / traced resize computes its scale in float32
and often resizes to one pixel less than eager PyTorch (:class:`~segbench.models.transforms.ExactResizeTransform` computes it in
float64), and the RoI poolers' feature-map scales, which torchvision infers from the first image it sees
and then keeps, are set from an exact input (:func:`~segbench.models.transforms.fix_roi_pool_scales`).

Each file is written under a temporary name, loaded back by its own runtime and compared with the
PyTorch model on a few images (a blank one, one with many objects, a noise image, each of another size,
plus any ``check_images``): detections are matched one to one, and the largest box, score and mask
differences and the milliseconds per image are reported. Then the *accuracy check*: segm COCO AP
(:func:`segbench.eval.runner.evaluate_segmenter`) of the format and of float32 PyTorch on the same
``accuracy_images`` images of a val split (``accuracy_data``, else the data root in the checkpoint's run
``config.yaml``), reported as ``ap``, ``ap_fp32`` and ``ap_drop``; a drop above ``tolerances.ap`` fails
the format. The exact formats (state_dict, TorchScript, ONNX, OpenVINO) must pass both checks (without a
val split their accuracy is "not checked"); the reduced-precision ones (``bf16``, ``openvino_int8``)
differ from float32 by design, so their parity differences are reported only and the accuracy check
decides: without a val split they fail. Only a file that passes is renamed into place; a format that
fails to export or a check is reported as failed and leaves no file behind, and one whose package is
missing is reported "not installed" with the pip command.
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

from segbench.eval.analysis import lowest_kept_score
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
    "Bf16Runtime",
    "DEFAULT_FORMATS",
    "OnnxRuntime",
    "OpenVinoRuntime",
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
FORMATS: tuple[str, ...] = ("state_dict", "torchscript", "onnx", "openvino", "openvino_int8", "bf16")
#: What ``segbench export`` writes when ``formats`` is not given.
DEFAULT_FORMATS: tuple[str, ...] = ("state_dict", "torchscript", "onnx")
#: Formats that differ from float32 by design: the accuracy check, not the parity check, decides.
LOSSY_FORMATS: tuple[str, ...] = ("openvino_int8", "bf16")
#: File written for each format (inside ``out``); an OpenVINO ``.xml`` has its ``.bin`` beside it.
#: ``bf16`` writes no file (it is a way to run the checkpoint or ``model.pt``).
FILES: dict[str, str] = {
    "state_dict": "model.pt",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
    "openvino": "model.xml",
    "openvino_int8": "model_int8.xml",
}
#: Python packages (import names) each format needs, and how to install them.
PACKAGES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime"),
    "openvino": ("openvino", "onnx"),
    "openvino_int8": ("openvino", "nncf", "onnx"),
}
INSTALL: dict[str, str] = {
    "onnx": "pip install 'segbench[onnx]'",
    "openvino": "pip install 'segbench[deploy]'",
    "openvino_int8": "pip install 'segbench[deploy]'",
}
INT8_SCOPES: tuple[str, ...] = ("all", "backbone")
#: Node-name patterns that ``int8_scope=backbone`` leaves in float32 (the ONNX export's module scopes).
HEAD_PATTERNS: tuple[str, ...] = (r".*/rpn/.*", r".*/roi_heads/.*")
#: Operation types that only the heads have (the mask predictor's ``ConvTranspose2d``).
HEAD_TYPES: tuple[str, ...] = ("ConvolutionBackpropData",)
OPENVINO_CARD_KEY = "segbench_model"
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

    box : pixels (any box coordinate); score : absolute; mask : absolute mask probability (any pixel);
    ap : the largest segm AP drop (absolute, 0..1) against float32 PyTorch on the val images.
    """

    box: float = 0.1
    score: float = 1e-3
    mask: float = 0.02
    ap: float = 0.01

    def __post_init__(self) -> None:
        for name in ("box", "score", "mask", "ap"):
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
# The score floor: the lowest score an exported graph keeps
# --------------------------------------------------------------------------------------------------
def resolve_score_floor(value, score_thresholds: dict | None) -> float | None:
    """The ``score_floor`` of an export: the lowest score its graph keeps (``box_score_thresh``).

    ``None`` / ``"null"``: the model's own (0.05: every mask computed, ``predict`` can lower its threshold
    later); ``"auto"``: the lowest score ``segbench predict`` keeps by default (the per-class calibrated
    thresholds, 0.5 for a class without one), so that no mask is computed for a box predict throws away;
    a number in [0, 1).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return lowest_kept_score((score_thresholds or {}).values())
    try:
        floor = float(value)
    except (TypeError, ValueError):
        floor = None
    if isinstance(value, bool) or floor is None or not 0.0 <= floor < 1.0:
        raise SegbenchError(f"score_floor={value!r} is not valid: null, auto or a score in [0, 1)")
    return floor


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


def missing_packages(fmt: str) -> list[str]:
    """The packages ``fmt`` needs (:data:`PACKAGES`) that are not installed."""
    import importlib.util

    return [p for p in PACKAGES.get(fmt, ()) if importlib.util.find_spec(p) is None]


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise SegbenchError(f"running an OpenVINO model needs openvino: {INSTALL['openvino']}") from None
    return openvino


#: torchvision's RoI heads drop boxes narrower or lower than this (``box_ops.remove_small_boxes(boxes, 1e-2)``).
MIN_BOX_SIDE = 1e-2


def _drop_placeholder_rows(out: Output, score_cut: float) -> Output:
    """Remove the rows that are not detections from an OpenVINO result.

    Where the PyTorch model returns no detection (a blank image), OpenVINO's CPU plugin returns one row
    that is not a detection: its data-dependent ops do not produce empty tensors. The row holds whatever
    the buffer held (seen: score 0, or 4.5e36 with a ``score_floor``; a box of denormals). torchvision keeps
    only scores in ``[box_score_thresh, 1]`` (``score_cut``; softmax scores) and boxes at least 0.01 px wide
    and high (``remove_small_boxes(boxes, 1e-2)`` in its RoI heads), so a row that fails any was never a
    detection.
    """
    scores, boxes = out.get("scores"), out.get("boxes")
    if scores is None or boxes is None or not len(scores):
        return out
    keep = (
        (scores >= max(score_cut, np.finfo(np.float32).tiny))
        & (scores <= 1.0)
        & (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE)
        & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE)
    )
    if keep.all():
        return out
    return {k: v[keep] if len(v) == len(scores) else v for k, v in out.items()}


class OpenVinoRuntime:
    """An OpenVINO IR (``.xml`` + ``.bin``) compiled for the CPU; one ``[3, H, W]`` image per call, like
    :class:`OnnxRuntime`.

    Parameters
    ----------
    path
        The ``.xml`` file (its ``.bin`` beside it).
    precision
        OpenVINO's ``INFERENCE_PRECISION_HINT`` for the operations that are not quantised: ``f32``
        (default: the float32 computation; the CPU plugin would otherwise pick bf16 on CPUs with AMX) or
        ``bf16`` / ``f16``.
    num_threads
        ``INFERENCE_NUM_THREADS``; ``None``: OpenVINO's default (every core).
    """

    name = "openvino"

    def __init__(
        self, path: str | os.PathLike, *, precision: str = "f32", num_threads: int | None = None
    ) -> None:
        ov = _import_openvino()
        core = ov.Core()
        model = core.read_model(str(path))
        self.embedded_card = None
        if model.has_rt_info([OPENVINO_CARD_KEY]):
            self.embedded_card = json.loads(model.get_rt_info([OPENVINO_CARD_KEY]).astype(str))
        config = {"INFERENCE_PRECISION_HINT": precision}
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        card = self.embedded_card or {}
        self.score_cut = float(card.get("box_score_thresh", 0.0))

    def __call__(self, image: torch.Tensor) -> Output:
        x = np.ascontiguousarray(image.detach().cpu().float().numpy())
        res = self.request.infer({0: x})
        # copies: the request reuses its output buffers on the next call
        out = {n: np.array(res[o]) for n, o in zip(self.output_names, self.compiled.outputs, strict=True)}
        return _drop_placeholder_rows(out, self.score_cut)

    def run_batch(self, images: Sequence[torch.Tensor]) -> list[Output]:
        return [self(im) for im in images]


class Bf16Runtime(TorchRuntime):
    """The PyTorch model in bfloat16 autocast with channels_last weights (``precision=bf16``), for the
    parity check of the ``bf16`` format; outputs in float32."""

    name = "bf16"

    def __init__(self, model: torch.nn.Module, *, device: str = "cpu") -> None:
        from segbench.models.segmenter import prepare_model

        super().__init__(prepare_model(copy.deepcopy(model), "bf16"), device=device)

    @torch.inference_mode()
    def run_batch(self, images: Sequence[torch.Tensor]) -> list[Output]:
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16):
            out = self.model([im.to(self.device) for im in images])
        return [_to_numpy({k: v.float() if v.is_floating_point() else v for k, v in d.items()}) for d in out]


def load_exported_model(path: str | os.PathLike, *, device: str = "cpu"):
    """Open a TorchScript (``.pt``/``.ts``), ONNX (``.onnx``), OpenVINO (``.xml``, float32 or INT8) or
    state_dict (``model.pt``) export and its model card.

    The card is ``model.json`` beside the file when there is one, else the copy embedded in the file
    (TorchScript, ONNX, OpenVINO). A state_dict export is recognised by the card beside it. OpenVINO
    models run on the CPU whatever ``device`` says.

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
        elif suffix == ".xml":
            if device != "cpu":
                log.warning("OpenVINO models run on the CPU here (device=%s is not used)", device)
            runtime = OpenVinoRuntime(path)
            if path.stem.endswith("int8"):
                runtime.name = "openvino_int8"
        else:
            raise SegbenchError(
                f"{path}: unknown export type {suffix!r}; pass a TorchScript (.pt, .ts), ONNX (.onnx) or "
                "OpenVINO (.xml) file written by `segbench export` (for a training checkpoint use ckpt_path=)"
            )
    except SegbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.jit / onnxruntime / openvino raise many kinds for bad files
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


def _torch_onnx_export(model: torch.nn.Module, path: Path, *, example: torch.Tensor, opset: int) -> None:
    """``torch.onnx.export`` with the legacy exporter: one ``[3, H, W]`` image, H/W and N dynamic."""
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


def write_onnx(
    model: torch.nn.Module, path: Path, card: dict, *, example: torch.Tensor, opset: int
) -> Callable[[], object]:
    """Export with the legacy TorchScript-based ONNX exporter (one ``[3, H, W]`` image, H/W dynamic)."""
    try:
        import onnx
    except ImportError:
        raise SegbenchError(f"ONNX export needs onnx and onnxruntime: {INSTALL['onnx']}") from None
    _torch_onnx_export(model, path, example=example, opset=opset)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = EMBEDDED_CARD, json.dumps(card)
    onnx.save(proto, str(path))
    return lambda: OnnxRuntime(path)


def _save_openvino(ov_model, path: Path, card: dict) -> None:
    """``openvino.save_model`` with float32 weights (no fp16 compression) and the card in the rt_info."""
    ov = _import_openvino()
    ov_model.set_rt_info(json.dumps(card), [OPENVINO_CARD_KEY])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)


def convert_to_openvino(
    model: torch.nn.Module, *, example: torch.Tensor, opset: int, onnx_file: Path | None = None
):
    """The ``openvino.Model`` of ``model`` (an :func:`exportable_model`), converted from its ONNX export
    (``onnx_file`` when one is there, else a temporary one)."""
    import tempfile

    ov = _import_openvino()
    if onnx_file is not None:
        return _quiet(ov.convert_model, str(onnx_file))
    with tempfile.TemporaryDirectory(prefix="segbench-ov-") as d:
        src = Path(d) / "model.onnx"
        _torch_onnx_export(model, src, example=example, opset=opset)
        ov_model = _quiet(ov.convert_model, str(src))
        # the converted model may still read the ONNX file's memory: make it its own before the file goes
        return ov_model.clone()


def write_openvino(ov_model, path: Path, card: dict) -> Callable[[], object]:
    """Save an ``openvino.Model`` (:func:`convert_to_openvino`) as ``path`` (``.xml``) + its ``.bin``."""
    _save_openvino(ov_model, path, card)
    return lambda: OpenVinoRuntime(path)


def _image_as_input(path: Path) -> np.ndarray:
    """A calibration image as the runtime gets it: ``float32[3, H, W]`` in 0..1."""
    from segbench.data.coco import read_image
    from segbench.models.segmenter import image_to_tensor

    return image_to_tensor(read_image(path)).numpy()


def quantize_openvino(ov_model, calibration: Sequence[Path], *, scope: str = "all"):
    """INT8 post-training quantisation of an OpenVINO model by NNCF (``nncf.quantize``).

    Parameters
    ----------
    ov_model
        The float32 ``openvino.Model`` (not changed).
    calibration
        Image files; each is given to the model exactly as the runtime gets it (``float32[3, H, W]`` in
        0..1, :func:`segbench.models.segmenter.image_to_tensor`), all of them used (``subset_size``).
    scope
        ``all``: every convolution and matrix product (NNCF's default CNN preset: symmetric
        weights, per-channel; fast bias correction); ``backbone``: only the backbone + FPN, the RPN
        and RoI heads (:data:`HEAD_PATTERNS`, :data:`HEAD_TYPES`) stay float32. ``all`` falls back to
        ``backbone`` when NNCF raises on the whole graph.

    Returns
    -------
    model, scope_used
        The quantised ``openvino.Model`` and the scope used (with the reason when it fell back).
    """
    try:
        import nncf
    except ImportError:
        raise SegbenchError(f"INT8 quantisation needs nncf: {INSTALL['openvino_int8']}") from None
    if scope not in INT8_SCOPES:
        raise SegbenchError(f"int8_scope={scope!r} is not valid; choose one of {', '.join(INT8_SCOPES)}")
    if not calibration:
        raise SegbenchError("INT8 quantisation needs calibration images (calibration_images >= 1)")
    nncf.set_log_level(logging.WARNING)
    # nncf.ModelType.TRANSFORMER is for attention models (SmoothQuant, ignored softmax): not this CNN
    data = nncf.Dataset(list(calibration), _image_as_input)

    def run(which: str):
        ignored = None
        if which == "backbone":
            # the mask predictor's transposed conv loses its module name in the conversion: by type
            ignored = nncf.IgnoredScope(patterns=list(HEAD_PATTERNS), types=list(HEAD_TYPES), validate=False)
        return _quiet(
            nncf.quantize, ov_model.clone(), data, subset_size=len(calibration), ignored_scope=ignored
        )

    try:
        return run(scope), scope
    except Exception as e:  # noqa: BLE001 - NNCF raises many kinds on graphs it cannot handle
        if scope != "all":
            raise
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        log.warning(
            "INT8 quantisation of the whole graph failed (%s); quantising the backbone + FPN only", reason
        )
        return run("backbone"), f"backbone (the whole graph failed: {reason})"


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
# Data for the accuracy check and the INT8 calibration
# --------------------------------------------------------------------------------------------------
def run_data_config(ckpt_path: str | os.PathLike) -> dict | None:
    """The ``data`` section of the ``config.yaml`` of the run that wrote ``ckpt_path``
    (``<run_dir>/checkpoints/<name>.ckpt``), or None when there is none."""
    import yaml

    from segbench.training import RUN_MARKER

    ckpt = Path(ckpt_path)
    for folder in (ckpt.parent.parent, ckpt.parent):
        f = folder / RUN_MARKER
        if f.is_file():
            try:
                cfg = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError):
                log.warning("cannot read %s: the data of the run that wrote %s is unknown", f, ckpt)
                return None
            data = cfg.get("data") if isinstance(cfg, dict) else None
            return dict(data) if isinstance(data, dict) else None
    return None


def _open(root, split: str, card: dict, *, ann=None, image_root=None):
    from segbench.data.coco import open_split
    from segbench.models.checkpoint import check_classes

    ds = open_split(root, split, ann_file=ann, image_root=image_root)
    if card.get("categories"):
        ds.use_classes(card["categories"], source="the checkpoint")
    check_classes(
        card, ds, source=card.get("source_checkpoint", "the checkpoint"), action="check the accuracy"
    )
    return ds


def find_split(ckpt_path: str | os.PathLike, card: dict, *, split: str, explicit: str | os.PathLike | None):
    """The ``split`` (``val`` / ``train``) of ``explicit`` (a COCO folder) or, without it, of the data the
    checkpoint was trained on (its run's ``config.yaml``).

    Returns ``(dataset, None)`` or ``(None, reason)``; an ``explicit`` folder that cannot be opened is an
    error (:class:`SegbenchError`).
    """
    key = "accuracy_data" if split == "val" else "calibration_data"
    if explicit is not None:
        try:
            return _open(explicit, "val" if split == "val" else "train", card), None
        except SegbenchError as e:
            raise SegbenchError(f"{key}={explicit}: {e}") from None
    data = run_data_config(ckpt_path)
    if not data or not data.get("root") and not data.get(f"{split}_ann"):
        return (
            None,
            f"no {split} split (no run config.yaml beside the checkpoint names its data; pass {key}=DIR)",
        )
    name = data.get("val_split" if split == "val" else "train_split") or split
    try:
        ds = _open(
            data.get("root"), name, card, ann=data.get(f"{split}_ann"), image_root=data.get("image_root")
        )
    except SegbenchError as e:
        return None, f"no {split} split ({str(e).splitlines()[0][:200]}; pass {key}=DIR)"
    return ds, None


def calibration_files(
    ckpt_path: str | os.PathLike, card: dict, *, count: int, calibration_data: str | os.PathLike | None = None
) -> tuple[list[Path], str]:
    """Up to ``count`` image files for the INT8 calibration, spread evenly over their source, and where
    they come from: the image files of ``calibration_data`` (a folder of images, or a COCO folder's train
    split), else the train split of the checkpoint's data."""
    from segbench.data.coco import IMAGE_EXTENSIONS

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SegbenchError(f"calibration_images must be a positive integer, got {count!r}")
    files: list[Path] = []
    if calibration_data is not None:
        d = Path(calibration_data)
        if not d.is_dir():
            raise SegbenchError(f"calibration_data={d} is not a folder (a folder of images or a COCO folder)")
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        where = f"the images of {d}"
    if not files:
        ds, reason = find_split(ckpt_path, card, split="train", explicit=calibration_data)
        if ds is None:
            raise SegbenchError(f"no calibration images: {reason}")
        files = [ds.image_path(i) for i in range(len(ds))]
        where = f"the train split {ds.ann_file}"
    if len(files) > count:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]
    return files, where


def _single(segment_batch: Callable) -> Callable:
    """``image -> Instances`` from ``images -> list[Instances]`` (the evaluator's one-image interface)."""
    return lambda image: segment_batch([image])[0]


def _torch_segmenter(model: torch.nn.Module, mask_threshold: float, precision: str):
    """``image -> Instances`` by :func:`segbench.models.segmenter.predict_instances` (``segbench predict``'s
    path) in ``precision``."""
    from segbench.models.segmenter import image_to_tensor, predict_instances, prepare_model

    if precision != "fp32":
        model = prepare_model(copy.deepcopy(model), precision)

    def segment(image: np.ndarray):
        x = image_to_tensor(image)
        return predict_instances(model, [x], mask_threshold=mask_threshold, precision=precision)[0]

    return segment


def segm_ap(segment: Callable, dataset, limit: int) -> dict:
    """segm COCO AP of ``segment`` on the first ``limit`` images of ``dataset`` (segbench's evaluator)."""
    from segbench.eval.runner import evaluate_segmenter

    metrics, _ = evaluate_segmenter(segment, dataset, limit=limit)
    ap = metrics.get("segm_AP")
    return {"ap": None if ap is None else float(ap), "ms_per_image": float(metrics["ms_per_image"])}


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
    return [f for f in FORMATS if f in formats]  # in FORMATS order: OpenVINO reuses the ONNX file


def _companions(path: Path) -> list[Path]:
    """The files of one export: an OpenVINO ``.xml`` has its weights in the ``.bin`` of the same stem."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def _temporary(final: Path) -> Path:
    """Where a file is written before its checks (OpenVINO wants its ``.xml`` suffix kept)."""
    if final.suffix == ".xml":
        return final.with_name(final.stem + ".partial.xml")
    return final.with_name(final.name + ".partial")


def _commit(tmp: Path, final: Path) -> None:
    for a, b in zip(_companions(tmp), _companions(final), strict=True):
        os.replace(a, b)


def _discard(tmp: Path, final: Path, *, keep_failed: bool) -> str | None:
    """Remove (or set aside as ``*.failed``) a file that failed, and any older file of that name."""
    for f in _companions(final):
        if f.exists():
            f.unlink()
    if not tmp.exists():
        for f in _companions(tmp):
            f.unlink(missing_ok=True)
        return None
    if keep_failed:
        if final.suffix == ".xml":
            failed = final.with_name(final.stem + ".failed.xml")
        else:
            failed = final.with_name(final.name + ".failed")
        _commit(tmp, failed)
        return failed.name
    for f in _companions(tmp):
        f.unlink(missing_ok=True)
    return None


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {msg[:500]}"


class _Accuracy:
    """The accuracy check: float32 PyTorch's segm AP on the val images, computed once, and each format's."""

    def __init__(self, model, card: dict, dataset, reason: str | None, limit: int, tol: float) -> None:
        self.model, self.card, self.dataset, self.tol = model, card, dataset, tol
        self.reason = reason
        self.limit = min(limit, len(dataset)) if dataset is not None else 0
        if dataset is not None and self.limit == 0:
            self.reason = (
                "accuracy_images=0" if limit == 0 else f"the val split {dataset.ann_file} has no image"
            )
        self.mask_threshold = float(card.get("mask_threshold", 0.5))
        self._fp32: dict | None = None

    @property
    def checked(self) -> bool:
        return self.reason is None

    def describe(self) -> dict:
        if not self.checked:
            return {"checked": False, "reason": f"not checked: {self.reason}"}
        return {
            "checked": True,
            "data": str(self.dataset.ann_file),
            "images": self.limit,
            "tolerance": self.tol,
        }

    def fp32(self) -> dict:
        if self._fp32 is None:
            self._fp32 = segm_ap(
                _torch_segmenter(self.model, self.mask_threshold, "fp32"), self.dataset, self.limit
            )
            log.info(
                "accuracy check: float32 PyTorch segm AP %s on %d val images", self._fp32["ap"], self.limit
            )
        return self._fp32

    def check(self, segment: Callable) -> dict:
        """``ap``, ``ap_fp32``, ``ap_drop``, ``accuracy`` (passed / failed / not checked: why) and the
        problem, if any."""
        if not self.checked:
            return {"ap": None, "ap_fp32": None, "ap_drop": None, "accuracy": f"not checked: {self.reason}"}
        ref = self.fp32()
        if ref["ap"] is None:
            why = "not checked: the val images have no annotation of the model's classes"
            return {"ap": None, "ap_fp32": None, "ap_drop": None, "accuracy": why}
        got = segm_ap(segment, self.dataset, self.limit)
        drop = ref["ap"] - (got["ap"] or 0.0)
        res = {
            "ap": got["ap"],
            "ap_fp32": ref["ap"],
            "ap_drop": drop,
            "accuracy_ms_per_image": got["ms_per_image"],
            "accuracy": "passed" if drop <= self.tol else "failed",
        }
        if drop > self.tol:
            res["accuracy_problem"] = (
                f"segm AP {got['ap']:.4f} vs {ref['ap']:.4f} in float32 PyTorch on {self.limit} val images: "
                f"drop {drop:.4f} > tolerances.ap {self.tol:.4g}"
            )
        return res


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    tolerances: Tolerances | None = None,
    opset: int = MIN_OPSET,
    check_size: int | None = None,
    check_images: Sequence[str | os.PathLike] = (),
    timing_runs: int = 1,
    keep_failed: bool = False,
    accuracy_data: str | os.PathLike | None = None,
    accuracy_images: int = 100,
    calibration_images: int = 300,
    calibration_data: str | os.PathLike | None = None,
    int8_scope: str = "all",
    score_floor: float | str | None = None,
) -> dict:
    """Export a segbench checkpoint to ``formats`` in ``out_dir`` and check each against PyTorch.

    Parameters
    ----------
    ckpt_path
        A checkpoint written by ``segbench train``.
    out_dir
        Destination folder (created); ``model.json``, the model files and ``export_report.json``.
    formats
        Any of :data:`FORMATS`: ``"state_dict"``, ``"torchscript"``, ``"onnx"``, ``"openvino"``,
        ``"openvino_int8"``, ``"bf16"`` (a check only, no file).
    tolerances
        Largest box / score / mask differences and segm AP drop that pass (:class:`Tolerances`).
    opset
        ONNX opset (>= 17), also of the ONNX graph the OpenVINO model is converted from.
    check_size
        Side of the generated check images; ``None``: the model's ``min_size`` up to 320 (the model
        resizes its input to ``min_size`` anyway) or 256 for ``keep_size`` models.
    check_images
        Extra image files to check on (your own data).
    timing_runs
        Timed calls per image and runtime (after one warm-up call).
    keep_failed
        Keep a file that failed its check as ``<name>.failed`` (``<stem>.failed.xml`` + ``.bin`` for
        OpenVINO) for debugging instead of deleting it.
    accuracy_data
        A COCO folder whose val split the accuracy check scores; ``None``: the data root recorded in the
        checkpoint's run ``config.yaml``, if it is there (else the accuracy is "not checked").
    accuracy_images
        At most this many val images (the first ones) are scored; 0 skips the accuracy check.
    calibration_images
        Images the INT8 calibration uses (spread evenly over the source).
    calibration_data
        A folder of images or a COCO folder (its train split) to calibrate on; ``None``: the train split
        of the checkpoint's data.
    int8_scope
        ``all`` or ``backbone`` (:func:`quantize_openvino`).
    score_floor
        ``None``, ``"auto"`` or a score (:func:`resolve_score_floor`): the lowest score every exported
        graph keeps. Boxes below it get no mask (the RoI heads drop them before the mask head), which is
        most of the time of a model whose low-score boxes predict would throw away; the reference and the
        accuracy check use the same floor, and ``predict`` refuses a lower ``score_threshold`` on the export.

    Returns
    -------
    dict
        The report written to ``export_report.json``; ``report["ok"]`` is True when every format passed.
    """
    formats = _check_formats(formats)
    tol = tolerances or Tolerances()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise SegbenchError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if isinstance(accuracy_images, bool) or not isinstance(accuracy_images, int) or accuracy_images < 0:
        raise SegbenchError(f"accuracy_images must be an integer >= 0, got {accuracy_images!r}")
    if int8_scope not in INT8_SCOPES:
        raise SegbenchError(f"int8_scope={int8_scope!r} is not valid; choose one of {', '.join(INT8_SCOPES)}")
    from segbench.io import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, meta, build = load_model(ckpt_path)
    floor = resolve_score_floor(score_floor, meta.get("score_thresholds"))
    if floor is not None:  # every format, the reference and the accuracy check keep the same boxes
        floor = max(floor, float(model.roi_heads.score_thresh))
        # torchvision keeps scores > score_thresh, predict scores >= its threshold: the float32 just below
        # the floor keeps a box scored exactly at a calibrated threshold (one is, on the val split)
        below = float(np.nextafter(np.float32(floor), np.float32(0)))
        model.roi_heads.score_thresh = below
        build = {**build, "box_score_thresh": below}
    card = model_card(model, meta, build, source=str(ckpt_path))
    card["score_floor"] = floor
    if check_size is None:  # the model resizes to min_size itself: smaller inputs only make smaller masks
        check_size = 256 if card["image"]["keep_size"] else min(int(card["image"]["min_size"][0]), 320)
    noise_size = None
    if not card["image"]["keep_size"]:  # a noise image whose resize float32 arithmetic gets wrong
        img = card["image"]
        noise_size = rounding_sensitive_size(check_size, img["min_size"][-1], img["max_size"])
    images = default_check_images(check_size, check_images, noise_size=noise_size)
    score_cut = card["box_score_thresh"]
    max_dets = card["box_detections_per_img"]
    val, reason = (None, "accuracy_images=0")
    if accuracy_images > 0:
        val, reason = find_split(ckpt_path, card, split="val", explicit=accuracy_data)
    accuracy = _Accuracy(model, card, val, reason, accuracy_images, tol.ap)

    reference = TorchRuntime(model)
    refs, ref_ms = _time_runtime(reference, images, timing_runs)
    report: dict = {
        "checkpoint": str(ckpt_path),
        "out": str(out),
        "versions": card["versions"],
        "opset": opset,
        "score_floor": floor,
        "tolerances": asdict(tol),
        "check_images": [
            {"image": n, "height": int(t.shape[1]), "width": int(t.shape[2])} for n, t in images
        ],
        "reference": {
            "runtime": "pytorch",
            "ms_per_image": ref_ms,
            "detections": {n: len(r["scores"]) for (n, _), r in zip(images, refs, strict=True)},
        },
        "accuracy_check": accuracy.describe(),
        "formats": {},
    }
    if not any(len(r["scores"]) == 0 for r in refs):
        log.info("the model detects something on every check image: the no-detection case is not exercised")
    if not any(len(r["scores"]) >= 10 for r in refs):
        log.info("no check image gives 10 or more detections: pass check_images=[...] with crowded images")

    ov_fp32 = None  # the converted OpenVINO model, shared by openvino and openvino_int8
    for fmt in formats:
        final = out / FILES.get(fmt, f"{fmt}.none")
        tmp = _temporary(final)
        entry: dict = {"status": "failed", "file": None, "error": None}
        missing = missing_packages(fmt)
        if missing:
            entry.update(
                status="not installed", error=f"not installed ({', '.join(missing)}): {INSTALL[fmt]}"
            )
            log.error("%s export skipped: %s", fmt, entry["error"])
            if fmt in FILES:  # no stale file of an earlier export left as if it were this one's
                _discard(tmp, final, keep_failed=False)
            report["formats"][fmt] = entry
            continue
        lossy = fmt in LOSSY_FORMATS
        t0 = time.perf_counter()
        try:
            if fmt == "state_dict":
                opener = write_state_dict(model, tmp, card)
            elif fmt == "torchscript":
                opener = write_torchscript(exportable_model(model), tmp, card)
            elif fmt == "onnx":
                opener = write_onnx(exportable_model(model), tmp, card, example=images[1][1], opset=opset)
            elif fmt in ("openvino", "openvino_int8"):
                if ov_fp32 is None:
                    onnx_file = out / FILES["onnx"] if card["files"].get("onnx") else None
                    ov_fp32 = convert_to_openvino(
                        exportable_model(model), example=images[1][1], opset=opset, onnx_file=onnx_file
                    )
                if fmt == "openvino":
                    opener = write_openvino(ov_fp32, tmp, card)
                else:
                    files, source = calibration_files(
                        ckpt_path, card, count=calibration_images, calibration_data=calibration_data
                    )
                    q, scope = quantize_openvino(ov_fp32, files, scope=int8_scope)
                    entry["int8"] = {"scope": scope, "calibration_images": len(files), "calibration": source}
                    int8_card = {**card, "int8": entry["int8"]}
                    opener = write_openvino(q, tmp, int8_card)
            else:  # bf16: no file, the checkpoint run in bfloat16
                opener = lambda: Bf16Runtime(model)  # noqa: E731
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
            problems = list(result["problems"])
            entry.update(result)
            entry["parity"] = "passed" if result["passed"] else "failed"
            if lossy:  # differs from float32 by design: the differences are reported, the AP decides
                entry["parity"] += " (reported only: reduced precision; the accuracy check decides)"
                problems = []
            if not problems:
                if fmt == "bf16":
                    segment = _torch_segmenter(model, accuracy.mask_threshold, "bf16")
                else:
                    from segbench.models.segmenter import runtime_segmenter

                    segment = _single(runtime_segmenter(runtime, accuracy.mask_threshold))
                acc = accuracy.check(segment)
                entry.update(acc)
                if "accuracy_problem" in acc:
                    problems.append(acc["accuracy_problem"])
                elif lossy and acc["accuracy"] != "passed":
                    problems.append(
                        f"accuracy {acc['accuracy']}; a reduced-precision format is kept only when its segm AP "
                        "is checked: pass accuracy_data=DIR (a COCO folder with a val split)"
                    )
            entry["passed"] = not problems
            entry["problems"] = problems
            if not problems:
                if fmt in FILES:
                    _commit(tmp, final)
                    entry["file"] = final.name
                    card["files"][fmt] = final.name
                    if "int8" in entry:  # how model_int8.xml was calibrated
                        card["int8"] = entry["int8"]
                else:
                    card["precisions"] = sorted({*card.get("precisions", ["fp32"]), "bf16"})
                entry["status"] = "ok"
            else:
                entry["error"] = "; ".join(problems)
        except Exception as e:  # noqa: BLE001 - one format failing must not stop the others
            entry["error"] = _first_line(e)
            log.debug("export %s failed", fmt, exc_info=True)
        if entry["status"] != "ok":
            entry["kept_as"] = _discard(tmp, final, keep_failed=keep_failed) if fmt in FILES else None
            log.error("%s export failed: %s", fmt, entry["error"])
        report["formats"][fmt] = entry

    report["ok"] = all(e["status"] == "ok" for e in report["formats"].values())
    write_json(out / CARD_FILE, card)
    write_json(out / REPORT_FILE, report)
    return report


def format_report_table(report: dict) -> str:
    """The parity and accuracy checks as a plain-text table (one row per runtime)."""
    names = [c["image"] for c in report["check_images"]]
    head = (
        f"{'format':<14}{'status':<8}{'file':<22}{'max|dbox| px':>13}{'max|dscore|':>13}{'max|dmask|':>12}"
        f"{'ms/img':>9}{'segm AP':>9}{'AP drop':>9}  detections ({'/'.join(names)})"
    )
    ref = report["reference"]
    rows = [head, "-" * len(head)]
    dets = "/".join(str(ref["detections"][n]) for n in names)
    fp32 = next((e["ap_fp32"] for e in report["formats"].values() if e.get("ap_fp32") is not None), None)

    def g(v, fmt=".2g"):
        return "-" if v is None else format(v, fmt)

    rows.append(
        f"{'pytorch':<14}{'ref':<8}{'-':<22}{'-':>13}{'-':>13}{'-':>12}{ref['ms_per_image']:>9.1f}"
        f"{g(fp32, '.4f'):>9}{'-':>9}  {dets}"
    )
    for fmt, e in report["formats"].items():
        per = {p["image"]: p["detections"] for p in e.get("images", [])}
        dets = "/".join(str(per.get(n, "-")) for n in names)
        ms = e.get("ms_per_image")
        rows.append(
            f"{fmt:<14}{e['status'][:7]:<8}{(e['file'] or '-'):<22}{g(e.get('max_box_diff')):>13}"
            f"{g(e.get('max_score_diff')):>13}{g(e.get('max_mask_diff')):>12}"
            f"{('-' if ms is None else f'{ms:.1f}'):>9}{g(e.get('ap'), '.4f'):>9}{g(e.get('ap_drop'), '+.4f'):>9}"
            f"  {dets}"
        )
    acc = report.get("accuracy_check") or {}
    if acc.get("checked"):
        rows.append(
            f"accuracy: segm AP on {acc['images']} val images of {acc['data']} (tolerance {acc['tolerance']:g})"
        )
    elif acc:
        rows.append(f"accuracy {acc['reason']}")
    for fmt, e in report["formats"].items():
        if e["status"] == "not installed":
            rows.append(f"{fmt} NOT INSTALLED: {e['error']}")
        elif e["status"] != "ok":
            rows.append(f"{fmt} FAILED: {e['error']}")
    return "\n".join(rows)
