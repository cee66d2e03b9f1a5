"""The auto recipe (``segbench train experiment=auto``): a training recipe chosen from the data and the machine.

Three plain parts, each usable alone:

- :func:`train_statistics` reads the train split's annotations (run-length encoded areas, never dense masks):
  image sizes, object sides (``sqrt(area)``) overall and per class, objects per image, class counts.
- :func:`probe_machine` times a few real training steps of the chosen model on this machine, to predict how
  many steps fit in the time budget (and whether bfloat16 is faster than float32 here).
- :func:`choose_recipe` is a pure function of the statistics, the machine (and its probe), the budget and the
  keys the user set: an ordered list of ``(config key, value, reason)`` and the text that prints it. The rules
  and their constants are below, each with the reason it holds; docs/guide.md ("The auto recipe") lists them.

Nothing here reads a config object: the ``train`` command gathers the configured values, calls these
functions and applies the keys (the command layer's ``train``).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from segbench.data.annotations import decode_annotation
from segbench.data.datamodule import collate
from segbench.models.segmenter import cpu_has_bf16
from segbench.types import SegbenchError

__all__ = [
    "Choice",
    "Machine",
    "Probe",
    "Quantiles",
    "Recipe",
    "TrainStats",
    "choose_recipe",
    "describe_machine",
    "experiment_yaml",
    "probe_machine",
    "train_statistics",
]

# --------------------------------------------------------------------------------------------------
# The rules' constants (docs/guide.md, "The auto recipe", lists them with the rules)
# --------------------------------------------------------------------------------------------------

#: Median object side (px, at training scale) that Mask R-CNN learns well. Below ~24 px an object covers at
#: most 6 cells of the finest FPN level (stride 4) and its RoI features are mostly interpolation; above ~96 px
#: the images could be smaller (faster steps) without losing their objects.
OBJECT_BAND = (24.0, 96.0)
#: The median object side aimed at when the images must be rescaled: the band's geometric middle.
OBJECT_AIM = 48.0
#: The most a training image is enlarged: interpolated pixels add no detail and each step costs f² more.
MAX_UPSCALE = 2.0
#: Long side (px) of a training image or crop on a CPU: a step's time grows with its pixels (the GPU recipe's
#: 800-1333 px took 31 s a step on 2 cores; 512 px takes a few seconds).
CPU_IMAGE_CAP = 512
#: Long side (px) of a training image on a GPU: torchvision's own max_size.
GPU_IMAGE_CAP = 1333
#: Image sides are multiples of the FPN's coarsest stride, so that no padding is wasted.
SIZE_STEP = 32
#: Multi-scale training (``recipe.multi_scale=true``): short sides ``S ± k x SIZE_STEP`` within this share of
#: the chosen ``S`` (and with the median object still in ``OBJECT_BAND``, the long side within the cap); the
#: model is tested at ``S`` (torchvision tests at the last ``min_size`` of the list).
MULTI_SCALE_RANGE = 0.25
#: Images whose long side exceeds the median one by more than this factor would be shrunk by that much more
#: than the median image when every image is resized to one size: their objects' pixel size is not kept.
SIZE_VARIATION = 2.0
#: Anchors: one size per FPN level, doubling per level, the first the power of two nearest the 5% object side
#: (on a log scale: an anchor ``a`` matches objects of ``a / reach`` to ``a * reach``, so the nearest one is the
#: one whose band holds that side; rounding down, as before, left the first level matching almost nothing and
#: put the median object one level coarser), kept in this range (8 px is 2 cells of the stride-4 level; above
#: 64 px small objects go unmatched).
ANCHOR_FIRST_RANGE = (8, 64)
ANCHOR_LEVELS = 5
#: An anchor still matches objects up to this factor larger than itself (IoU 0.5 for the right aspect ratio).
ANCHOR_REACH = math.sqrt(2.0)
#: COCO's detections per image (AP@100); the evaluation keeps more only when the detection cap is higher.
COCO_MAX_DETS = 100
#: The detection cap is this much above the most objects in one train image (val images may hold more).
DETECTIONS_MARGIN = 1.2
#: RPN proposals after NMS at test time per detection the box head may keep, and the least of them.
RPN_TEST_PER_DETECTION, RPN_TEST_MIN = 2, 150
#: RPN proposals after NMS in training (the RoI sampler draws from them): per detection, and the least.
RPN_TRAIN_PER_DETECTION, RPN_TRAIN_MIN = 2, 300
#: Proposals before NMS per proposal kept after it (NMS removes about half of the overlapping ones).
RPN_PRE_PER_POST = 2
#: RoI samples per image: 8 per object of a crowded image (the 95th percentile of objects per image), about 2
#: positives per object at torchvision's 25% positive fraction; a power of two in the range (32 was the CPU
#: frontier point on the synthetic set, docs/results.md; 512 is torchvision's GPU default).
ROIS_PER_OBJECT = 8
ROI_BATCH_RANGE = (32, 256)
#: Images per training step (4 images per update is what the CPU presets' lr 0.02 is for).
CPU_BATCH, GPU_BATCH = 4, 4
#: Above this many pixels per training image (a 384 x 384 image), a step takes 2 images and the gradient of
#: 2 steps is accumulated: the same 4 images per update with half the memory per step.
LARGE_IMAGE_PIXELS = 384 * 384
#: Fewest optimizer steps a CPU budget should hold: below them a from-scratch Mask R-CNN has barely started
#: learning its heads (the synthetic preset curve still rises steeply at 300 steps, docs/results.md), so the
#: recipe is lightened (fewer RoI samples, smaller native-size crops; re-probed) until they fit. 400 since
#: session 14: on dsb2018 at 15 min the level of 295 steps (128 RoIs, 384 px crops) made 0.341 segm mAP and the
#: next, 558 steps (64 RoIs, 256 px crops), 0.367; the level's probe said 293 and 382 steps in two runs, on
#: both sides of 300.
MIN_STEPS = 400
#: At most this many lightening levels: each halves the RoI samples (not below ROI_LIGHT_MIN) and shrinks
#: native-size crops by 128 px (not below CROP_LIGHT_MIN, nor 4x the 95% object side).
MAX_LIGHTEN = 2
ROI_LIGHT_MIN = 32
CROP_LIGHT_MIN = 256
#: Mask head channels on a CPU where no pretrained mask head is loaded (from scratch or ImageNet weights): 4
#: convolutions of this width instead of torchvision's 256. The head runs on every positive RoI in training and
#: on every detection in validation, so at 256 channels it outweighs a ResNet-18 on small crops (a 3x3 conv of
#: 256 channels on a 14x14 RoI is 0.23 GFLOP, 4 of them ~1 GFLOP a RoI); 128 channels is a quarter of that.
#: Measured at 15 min (docs/results.md, session 14): steps +22 % on dsb2018 and +34 % on the synthetic set, segm
#: mAP +0.018 / +0.021 / +0.042 (nuts), no set lower.
CPU_MASK_HEAD = (128, 128, 128, 128)
#: The time budget when ``budget=`` is not given (minutes).
DEFAULT_BUDGET_MINUTES = 15.0
#: Warm-up: about 5% of the steps the budget holds, at most 100 (the CPU presets' 50-100).
WARMUP_SHARE, WARMUP_MAX = 0.05, 100
#: Validations during training: about 4 in the budget, enough to choose a best checkpoint and cheap enough.
VALIDATIONS = 4
#: The share of the budget the validations may take; above it they run on the first val images only (the final
#: evaluation always uses the whole val split), and never on fewer than MIN_VAL_IMAGES. With the cosine decay
#: ending on the clock the last validation is nearly always the best, so the others only draw the curve: 20%
#: (before session 11) cost dsb2018's native-size validations 3 of its 15 minutes, ~90 training steps.
VAL_BUDGET_SHARE = 0.1
MIN_VAL_IMAGES = 10
#: trainer.max_epochs, with a clock, is this many times the epochs the probe predicts: the clock ends the run.
EPOCHS_MARGIN = 2.0
#: Loader workers on a CPU: one per core the training threads leave free, at most this many.
MAX_CPU_WORKERS = 4
#: bfloat16 autocast is chosen on a CPU with bfloat16 instructions only if the probe finds its steps at least
#: this much faster than float32's.
BF16_MIN_GAIN = 0.05
#: Lightning's loop, logging and checkpoints share the cores with the steps: a run is assumed this much slower
#: per step than the probe's bare steps (plus the probe's loading of a batch where no worker loads it).
STEP_OVERHEAD = 1.15
#: Without the probe, a CPU step is assumed to take NOMINAL_STEP_S per NOMINAL_STEP_PIXELS, in proportion to
#: its pixels: the synthetic preset's float32 step (4 images of 192 x 192 px: ~1.1 s with bfloat16 on the 2-core
#: development machine, 1.74x faster than float32). A deterministic guess, the same on every rank of a launch.
NOMINAL_STEP_S = 1.9
NOMINAL_STEP_PIXELS = 4 * 192 * 192
#: The probe starts no further timed step once its timed steps took this long (seconds).
PROBE_MAX_SECONDS = 20.0
#: Classes with fewer train instances are named in the recipe: their AP will be noisy.
FEW_INSTANCES = 10
#: Fewer train images than this is a tiny dataset: from scratch it learns little (say so).
TINY_DATASET = 50
#: LVIS repeat-factor sampling (``data.repeat_factor_threshold``) when a class is in fewer than this share of
#: the train images: an image of a class in a share ``f`` is drawn ``sqrt(t / f)`` times an epoch. Measured
#: (docs/results.md, session 11, 5 min): a synthetic set with one class in ~8 % of the images went from segm
#: mAP 0.372 to 0.431, the rare class from 0 to 0.156; a set with no class that rare is trained unchanged.
REPEAT_FACTOR_THRESHOLD = 0.3

#: ``current`` key (not a config key): the mask head widths of a ``model.net.weights`` file, read by the
#: command, so that the recipe builds the head the file fits (``None``: no file).
WEIGHTS_MASK_HEAD = "weights_file.mask_head_layers"
#: The configured values the rules read (``current`` of :func:`choose_recipe`), besides the keys they set.
CONTEXT_KEYS: tuple[str, ...] = (
    "model.net.backbone",
    "model.net.weights",
    "model.net.min_size",
    "model.net.max_size",
    "model.net.keep_size",
    "model.net.anchor_sizes",
    "model.net.mask_head_layers",
    "model.net.box_batch_size_per_image",
    "model.net.box_detections_per_img",
    "model.net.rpn_pre_nms_top_n_train",
    "model.net.rpn_post_nms_top_n_train",
    "model.net.rpn_pre_nms_top_n_test",
    "model.net.rpn_post_nms_top_n_test",
    "model.eval_max_dets",
    "model.channels_last",
    "model.scheduler.name",
    "model.scheduler.by_time",
    "model.scheduler.warmup_steps",
    "data.batch_size",
    "data.num_workers",
    "data.persistent_workers",
    "data.max_crop",
    "data.limit_train",
    "data.limit_val",
    "data.repeat_factor_threshold",
    "trainer.accelerator",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.max_time",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.check_val_every_n_epoch",
    "trainer.val_check_interval",
    "recipe.multi_scale",
)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantiles:
    """The 5/25/50/75/95% quantiles of a distribution (pixels, or a ratio)."""

    p5: float
    p25: float
    p50: float
    p75: float
    p95: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Quantiles | None:
        """The quantiles of ``values`` (``None`` for none).

        >>> Quantiles.of([10, 20, 30, 40, 50]).p50
        30.0
        """
        v = np.asarray(list(values), dtype=float)
        if not v.size:
            return None
        return cls(*(float(x) for x in np.percentile(v, [5, 25, 50, 75, 95])))

    def scaled(self, f: float) -> Quantiles:
        return Quantiles(self.p5 * f, self.p25 * f, self.p50 * f, self.p75 * f, self.p95 * f)


@dataclass(frozen=True)
class Sides:
    """Median, smallest and largest of one image side (px)."""

    median: float
    min: float
    max: float


@dataclass(frozen=True)
class TrainStats:
    """What the rules know of the train split (:func:`train_statistics`; tests write them by hand).

    ``object_side`` is ``sqrt(area)`` of each instance's mask in pixels; ``object_side_rel`` the same
    divided by the short side of its image (what survives torchvision's resize to one short side).
    ``objects_per_image`` is ``(median, p95, max)``; ``image_modes`` counts PIL modes (``RGB``, ``L``...).
    """

    images: int
    instances: int
    short_side: Sides
    long_side: Sides
    object_side: Quantiles | None
    object_side_rel: Quantiles | None
    objects_per_image: tuple[float, float, int]
    class_counts: dict[str, int] = field(default_factory=dict)
    object_side_per_class: dict[str, Quantiles] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)
    val_images: int | None = None
    class_images: dict[str, int] = field(default_factory=dict)  # train images holding each class

    @property
    def greyscale(self) -> bool:
        """Every image with a known mode has one channel (``L``, ``I;16``, ``1``...)."""
        known = {m: n for m, n in self.image_modes.items() if m}
        return bool(known) and all(
            m in ("1", "L", "LA", "I", "I;16", "F") or m.startswith("I;") for m in known
        )


def train_statistics(dataset, *, val_images: int | None = None, mode_sample: int = 200) -> TrainStats:
    """Statistics of a train split for :func:`choose_recipe`, from its annotations.

    Areas are those of the run-length encoded masks (pycocotools), never of dense masks; crowd regions are
    no objects. The image modes (RGB, greyscale...) are read from the headers of up to ``mode_sample``
    images spread over the split.

    Parameters
    ----------
    dataset : segbench.data.coco.CocoDataset
        The train split.
    val_images : int, optional
        The number of val images (the schedule rules size validations by it).

    Returns
    -------
    TrainStats
    """
    from PIL import Image

    names = list(dataset.class_names)
    label_name = {cid: names[lab - 1] for cid, lab in dataset.cat_id_to_label.items()}
    sides: list[float] = []
    rel: list[float] = []
    per_class: dict[str, list[float]] = {n: [] for n in names}
    counts: list[int] = []
    holding: Counter = Counter()
    short, long_ = [], []
    for i in range(len(dataset)):
        h, w = dataset.image_size(i)
        short.append(min(h, w))
        long_.append(max(h, w))
        n = 0
        present: set[str] = set()
        for ann in dataset.annotations(i):
            if ann.get("iscrowd", 0):
                continue
            side = math.sqrt(float(mask_utils.area(decode_annotation(ann, h, w))))
            if side <= 0:
                continue
            n += 1
            sides.append(side)
            rel.append(side / min(h, w))
            name = label_name.get(ann["category_id"])
            if name is not None:
                per_class[name].append(side)
                present.add(name)
        holding.update(present)
        counts.append(n)
    modes: Counter = Counter()
    if len(dataset):
        step = max(1, len(dataset) // max(mode_sample, 1))
        for i in range(0, len(dataset), step):
            try:
                with Image.open(dataset.image_path(i)) as im:
                    modes[im.mode] += 1
            except (OSError, SegbenchError):  # a missing file is the data module's error to report
                modes[""] += 1
    c = np.asarray(counts or [0])
    return TrainStats(
        images=len(dataset),
        instances=int(c.sum()),
        short_side=_sides(short),
        long_side=_sides(long_),
        object_side=Quantiles.of(sides),
        object_side_rel=Quantiles.of(rel),
        objects_per_image=(float(np.median(c)), float(np.percentile(c, 95)), int(c.max())),
        class_counts={n: len(v) for n, v in per_class.items()},
        object_side_per_class={n: q for n, v in per_class.items() if (q := Quantiles.of(v)) is not None},
        image_modes=dict(modes),
        val_images=val_images,
        class_images={n: int(holding[n]) for n in names},
    )


def _sides(values: Sequence[int]) -> Sides:
    if not values:
        return Sides(0.0, 0.0, 0.0)
    return Sides(float(np.median(values)), float(min(values)), float(max(values)))


# --------------------------------------------------------------------------------------------------
# The machine and its probe
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """Timed training steps of the chosen model on this machine (:func:`probe_machine`).

    ``step_s`` and ``bf16_step_s`` are the median seconds of one training batch (forward, backward and
    optimizer step) in float32 and under bfloat16 autocast + channels_last (``None``: not timed);
    ``infer_s`` the seconds to predict one val image with as many detections as a trained model finds,
    ``infer_cap_s`` with the detection cap filled (what the first validations of a run see: a young model's
    scores pass the threshold everywhere); ``image_size`` the largest (H, W) of the timed batches; ``data_s``
    the median seconds to load, augment and collate one batch of the train split in one process.
    """

    step_s: float
    batch_size: int
    steps: int
    bf16_step_s: float | None = None
    infer_s: float | None = None
    infer_cap_s: float | None = None
    image_size: tuple[int, int] | None = None
    device: str = "cpu"
    data_s: float | None = None  # median seconds to load, augment and collate one batch in this process


@dataclass(frozen=True)
class Machine:
    """This machine as the rules see it (:func:`describe_machine`), with a probe once one ran."""

    cores: int
    cuda: bool = False
    threads: int | None = None  # torch's intra-op threads, which the training steps use (None: one per core)
    gpu_name: str | None = None
    cpu_bf16: bool = False
    probe: Probe | None = None
    probe_skipped: str | None = None  # why no probe ran
    time_validation: bool = True  # Lightning validates by the clock (val_check_interval="DD:HH:MM:SS"; 2.6+)

    def describe(self) -> str:
        what = f"{self.cores} CPU core{'s' if self.cores != 1 else ''}"
        what += ", bfloat16 instructions" if self.cpu_bf16 else ", no bfloat16 instructions"
        return what + (f", GPU {self.gpu_name or 'cuda'}" if self.cuda else ", no CUDA GPU")


def describe_machine() -> Machine:
    """The cores this process may use, whether CUDA is available, whether the CPU has bfloat16 instructions."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    cuda = bool(torch.cuda.is_available())
    try:
        from pytorch_lightning.trainer.setup import _parse_time_interval_seconds  # noqa: F401

        time_validation = True
    except ImportError:  # Lightning < 2.6
        time_validation = False
    return Machine(
        cores=max(1, cores),
        cuda=cuda,
        threads=torch.get_num_threads(),
        gpu_name=torch.cuda.get_device_name(0) if cuda else None,
        cpu_bf16=cpu_has_bf16(),
        time_validation=time_validation,
    )


def probe_machine(
    model: torch.nn.Module,
    train_dataset,
    val_dataset=None,
    *,
    batch_size: int,
    steps: int = 3,
    bf16: bool = False,
    device: str = "cpu",
    seed: int = 0,
    detections: int | None = None,
    max_seconds: float = PROBE_MAX_SECONDS,
) -> Probe:
    """Time ``steps`` training steps of ``model`` on real batches of ``train_dataset`` (after an untimed
    warm-up step on one image), one prediction of a val image (after an untimed one), and the loading of the
    batches (``Probe.data_s``).

    The model is trained with learning rate 0 (its weights do not move) and should be a throwaway copy: with
    ``bf16`` it is left in ``channels_last``. The draws use their own seed inside ``torch.random.fork_rng``,
    so the caller's random state is untouched.

    Parameters
    ----------
    model
        A torchvision Mask R-CNN (``MaskRCNNModule.model``) built as the run will build it.
    train_dataset, val_dataset
        :class:`~segbench.data.datamodule.TrainDataset` (with the run's transforms and crops) and
        :class:`~segbench.data.datamodule.EvalDataset` items.
    batch_size
        Images per step, as in the run.
    steps
        Timed steps (>= 1); ``steps + 1`` batches are drawn.
    bf16
        Also time the steps under bfloat16 autocast with channels_last weights.
    device
        ``"cpu"`` or ``"cuda"``.
    detections
        Detections per image while the prediction is timed: an untrained model's scores pass the
        threshold everywhere and would fill the whole detection cap with masks, which a trained model does
        not (e.g. the 95th percentile of objects per image); ``None`` keeps the model's cap.
    max_seconds
        After the warm-up and one timed step, no further step starts once the timed steps took this long
        (a slow machine is measured well enough by one step).

    Returns
    -------
    Probe
    """
    if not isinstance(steps, int) or steps < 1:
        raise SegbenchError(f"recipe.probe_steps must be an integer >= 1, got {steps!r}")
    n = len(train_dataset)
    if n == 0:
        raise SegbenchError("the train split has no images to probe the machine with")
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batches, loads = [], []
        for _ in range(steps + 1):
            idx = rng.choice(n, size=min(batch_size, n), replace=False)
            t0 = time.perf_counter()
            batches.append(collate([train_dataset[int(k)] for k in idx]))
            loads.append(time.perf_counter() - t0)
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.0, momentum=0.9)
        with _as_trained(model):
            fp32, timed = _time_steps(model, opt, batches, device=device, dtype=None, max_seconds=max_seconds)
            bf = None
            if bf16:
                model.to(memory_format=torch.channels_last)
                bf, _ = _time_steps(model, opt, batches[: timed + 1], device=device, dtype=torch.bfloat16)
        infer = infer_cap = None
        if val_dataset is not None and len(val_dataset):
            infer = _time_inference(model, val_dataset, device=device, detections=detections)
            if detections is not None:
                infer_cap = _time_inference(model, val_dataset, device=device, detections=None)
    largest = max((tuple(im.shape[-2:]) for b in batches for im in b[0]), key=lambda s: s[0] * s[1])
    return Probe(
        step_s=fp32,
        batch_size=min(batch_size, n),
        steps=timed,
        bf16_step_s=bf,
        infer_s=infer,
        infer_cap_s=infer_cap,
        image_size=(int(largest[0]), int(largest[1])),
        device=device,
        data_s=float(statistics.median(loads)),
    )


@contextmanager
def _as_trained(model):
    """Time the steps of a trained model with an untrained one: every proposal counts as foreground, so the
    RoI sampler takes its full positive share (``positive_fraction`` of ``box_batch_size_per_image``) and
    the mask head — the costliest part of a step — runs on as many RoIs as it will once the RPN has learnt
    (at the start few random proposals reach IoU 0.5: measured on the synthetic set, a probe of the fresh
    model predicted 2.8 s a step, the run took 4.6). The matcher's thresholds are put back afterwards."""
    matcher = getattr(getattr(model, "roi_heads", None), "proposal_matcher", None)
    if matcher is None or not hasattr(matcher, "high_threshold"):
        yield
        return
    saved = matcher.high_threshold, matcher.low_threshold
    matcher.high_threshold = matcher.low_threshold = 0.0
    try:
        yield
    finally:
        matcher.high_threshold, matcher.low_threshold = saved


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _time_steps(
    model, opt, batches, *, device: str, dtype, max_seconds: float = math.inf
) -> tuple[float, int]:
    """The median seconds of the steps after the first, and how many were timed."""
    times: list[float] = []
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    for k, (images, targets) in enumerate(batches):
        if times and sum(times) >= max_seconds:
            break
        if k == 0:  # the warm-up (allocators, oneDNN kernels): one image is enough and costs a quarter
            images, targets = images[:1], targets[:1]
        images = [im.to(device) for im in images]
        targets = [{key: v.to(device) for key, v in t.items() if key != "image_id"} for t in targets]
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(kind, dtype=dtype, enabled=dtype is not None):
            losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if k:  # the first step warms up allocators and oneDNN kernels
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times)), len(times)


def _time_inference(model, val_dataset, *, device: str, detections: int | None, images: int = 1) -> float:
    heads = getattr(model, "roi_heads", None)
    cap = getattr(heads, "detections_per_img", None)
    if detections is not None and cap is not None:
        heads.detections_per_img = max(1, min(int(detections), int(cap)))
    model.eval()
    times = []
    with torch.no_grad():
        for k in range(min(images, len(val_dataset)) + 1):
            image = val_dataset[k % len(val_dataset)][0].to(device)
            _sync(device)
            t0 = time.perf_counter()
            model([image])
            _sync(device)
            if k:
                times.append(time.perf_counter() - t0)
    model.train()
    if detections is not None and cap is not None:
        heads.detections_per_img = cap
    return float(statistics.median(times))


# --------------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One key of a recipe: its value and why; ``override`` names the user's setting that kept it."""

    key: str
    value: Any
    reason: str
    override: str | None = None
    rule_value: Any = None  # what the rule would have chosen, when the user's value won

    def line(self, width: int = 44) -> str:
        kv = f"{self.key}={_show(self.value)}"
        if self.override is None:
            why = self.reason
        else:
            plain = self.override in ("", self.key) or self.override.lstrip("+").startswith(self.key + "=")
            src = "" if plain else f": {self.override}"
            differs = self.rule_value is not None and self.rule_value != self.value
            why = f"(your override{src})" + (f"; the rule: {_show(self.rule_value)}" if differs else "")
        return f"  {kv:<{width}} {why}"


@dataclass
class Recipe:
    """An ordered list of :class:`Choice` (config key, value, reason) and notes; :meth:`text` prints it."""

    choices: list[Choice]
    notes: list[str]
    header: str
    steps: float | None = None  # optimizer steps predicted in the budget (CPU, with a step time)
    lighten: int = 0  # lightening levels applied (MIN_STEPS)

    def values(self) -> dict[str, Any]:
        """``{key: value}`` in order (the user's overrides included, with the user's values)."""
        return {c.key: c.value for c in self.choices}

    def value(self, key: str, default: Any = None) -> Any:
        return next((c.value for c in self.choices if c.key == key), default)

    def text(self) -> str:
        width = min(max((len(f"{c.key}={_show(c.value)}") for c in self.choices), default=20) + 2, 56)
        lines = [self.header, *(f"  {n}" for n in self.notes), *(c.line(width) for c in self.choices)]
        return "\n".join(lines)


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_show(x) for x in v) + "]"
    return str(v)


class _Builder:
    """Collects choices; a key the user set keeps the user's value (returned, so later rules build on it)."""

    def __init__(self, overrides: Mapping[str, str], current: Mapping[str, Any]) -> None:
        self.overrides = dict(overrides)
        self.current = dict(current)
        self.choices: list[Choice] = []
        self.steps: float | None = None

    def overridden(self, key: str) -> str | None:
        """The user's setting of ``key`` (or of a key above it), ``None`` when the user did not set it."""
        parts = key.split(".")
        for k in range(len(parts), 0, -1):
            src = self.overrides.get(".".join(parts[:k]))
            if src is not None:
                return src
        return None

    def get(self, key: str, default: Any = None) -> Any:
        return self.current.get(key, default)

    def chosen(self, key: str, default: Any = None) -> Any:
        """The value a rule already set for ``key`` (the user's where they set it), else the configured one."""
        return next((c.value for c in reversed(self.choices) if c.key == key), self.get(key, default))

    def set(self, key: str, value: Any, reason: str) -> Any:
        src = self.overridden(key)
        if src is not None:
            user = self.current.get(key)
            self.choices.append(Choice(key, user, reason, override=src, rule_value=value))
            return user
        self.choices.append(Choice(key, value, reason))
        return value


def _round_step(x: float) -> int:
    return max(SIZE_STEP, int(round(x / SIZE_STEP)) * SIZE_STEP)


def _floor_step(x: float) -> int:
    return max(SIZE_STEP, int(x // SIZE_STEP) * SIZE_STEP)


def _ceil_step(x: float) -> int:
    return max(SIZE_STEP, int(math.ceil(x / SIZE_STEP - 1e-9)) * SIZE_STEP)


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(x, 1.0)))))


def _pow2_nearest(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(x, 1.0)) + 0.5)))


def _pow2_ceil(x: float) -> int:
    return 1 << max(0, int(math.ceil(math.log2(max(x, 1.0)) - 1e-9)))


def _size_of(value: Any) -> float | None:
    """A min_size setting (an int or torchvision's multi-scale list) as one side: the largest."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return float(max(value)) if value else None
    return float(value)


def _max_time(seconds: float) -> str:
    s = max(1, int(round(seconds)))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse_max_time(value: Any) -> float | None:
    """``trainer.max_time`` (``"DD:HH:MM:SS"`` or a dict of days/hours/minutes/seconds) in seconds.

    >>> parse_max_time("00:00:15:00")
    900.0
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        units = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
        return float(sum(float(value.get(k, 0)) * u for k, u in units.items()))
    parts = str(value).split(":")
    if len(parts) != 4:
        raise SegbenchError(f"trainer.max_time={value!r} is not DD:HH:MM:SS (e.g. 00:00:15:00)")
    d, h, m, s = (float(p) for p in parts)
    return d * 86400 + h * 3600 + m * 60 + s


def choose_recipe(
    stats: TrainStats,
    machine: Machine,
    *,
    budget_minutes: float | None = DEFAULT_BUDGET_MINUTES,
    overrides: Mapping[str, str] | None = None,
    current: Mapping[str, Any] | None = None,
    lighten: int = 0,
) -> Recipe:
    """The training recipe for ``stats`` on ``machine``: every key with its value and reason.

    A pure function. Each rule names its constants (module top); a key in ``overrides`` keeps the user's value
    (read from ``current``) and later rules build on that value.

    Parameters
    ----------
    stats
        The train split (:func:`train_statistics`).
    machine
        :func:`describe_machine`, with ``probe`` set once :func:`probe_machine` ran (the schedule and the
        precision then follow the measured step time).
    budget_minutes
        The training time budget (``budget=``); ``trainer.max_time`` set by the user wins.
    overrides
        ``{config key: the user's setting}`` for every key the user set (e.g. ``{"model.net.min_size":
        "model.net.min_size=256"}``); a key above another (``model.net``) covers it.
    current
        The configured values of :data:`CONTEXT_KEYS` (weights, backbone, epochs, and the user's values).
    lighten
        Lightening levels (0 to :data:`MAX_LIGHTEN`) for a CPU budget that holds fewer than :data:`MIN_STEPS`
        steps: each halves the RoI samples and shrinks native-size crops (:func:`lighter`; the command
        re-probes each level, since only a timing says what a step then costs).

    Returns
    -------
    Recipe

    Examples
    --------
    >>> stats = TrainStats(images=100, instances=400, short_side=Sides(600, 600, 600),
    ...     long_side=Sides(800, 800, 800), object_side=Quantiles(60, 80, 100, 120, 150),
    ...     object_side_rel=Quantiles(0.1, 0.133, 0.167, 0.2, 0.25), objects_per_image=(4, 8, 10))
    >>> r = choose_recipe(stats, Machine(cores=2), budget_minutes=15)
    >>> r.value("model.net.min_size"), r.value("model.net.max_size"), r.value("model.net.keep_size")
    (288, 384, False)
    """
    b = _Builder(overrides or {}, current or {})
    notes: list[str] = []
    gpu = _rule_device(b, machine)
    notes.append(_data_line(stats))
    lighten = 0 if gpu else max(0, min(int(lighten), MAX_LIGHTEN))
    scale = _rule_scale(b, stats, gpu=gpu, lighten=lighten)
    if scale.native and b.get("recipe.multi_scale"):
        notes.append(
            "recipe.multi_scale=true not applied: native-size training (keep_size) has no scale to vary"
        )
    _rule_anchors(b, stats, scale, notes)
    det = _rule_detections(b, stats)
    _rule_rpn(b, det)
    _rule_roi_batch(b, stats, lighten=lighten)
    _rule_mask_head(b, gpu=gpu)
    batch, accumulate = _rule_batch(b, stats, scale, machine, gpu=gpu)
    precision = _rule_precision(b, machine, gpu=gpu)
    _rule_workers(b, machine, precision, gpu=gpu)
    _rule_persistent_workers(b, stats, batch)
    _rule_schedule(
        b, stats, machine, budget_minutes, batch, accumulate, precision, scale.train_hw, gpu=gpu, notes=notes
    )
    _rule_weights(b, stats, notes)
    _rule_repeat_factor(b, stats)
    if stats.greyscale:
        notes.append(
            "greyscale images: loaded as 3 equal channels (the model's input is RGB); colour jitter's "
            "saturation and hue change nothing on them"
        )
    budget_text = "" if gpu else f", budget {_show(_budget_minutes(b, budget_minutes))} min"
    header = f"auto recipe: {stats.images} train images on {machine.describe()}{budget_text}"
    return Recipe(b.choices, notes, header, steps=b.steps, lighten=lighten)


def needs_lightening(recipe: Recipe) -> bool:
    """Whether the budget holds fewer than :data:`MIN_STEPS` steps of ``recipe`` (CPU, a step time known)
    and another lightening level is left."""
    return recipe.steps is not None and recipe.steps < MIN_STEPS and recipe.lighten < MAX_LIGHTEN


def _budget_minutes(b: _Builder, budget_minutes: float | None) -> float:
    if b.overridden("trainer.max_time") is not None:
        seconds = parse_max_time(b.get("trainer.max_time"))
        if seconds is not None:
            return seconds / 60
    if budget_minutes is None:
        return DEFAULT_BUDGET_MINUTES
    try:
        minutes = float(budget_minutes)
    except (TypeError, ValueError):
        minutes = float("nan")
    if not math.isfinite(minutes) or minutes <= 0:
        raise SegbenchError(f"budget={budget_minutes!r}: give the training time in minutes, e.g. budget=15")
    return minutes


def _data_line(s: TrainStats) -> str:
    size = f"{s.long_side.median:g}x{s.short_side.median:g}"
    spread = ""
    if s.long_side.max != s.long_side.min or s.short_side.max != s.short_side.min:
        spread = (
            f" (short side {s.short_side.min:g}-{s.short_side.max:g}, long side "
            f"{s.long_side.min:g}-{s.long_side.max:g})"
        )
    line = f"data: images {size} px median{spread}"
    if s.object_side is not None:
        q = s.object_side
        line += (
            f"; object side {q.p5:.0f}/{q.p25:.0f}/{q.p50:.0f}/{q.p75:.0f}/{q.p95:.0f} px (5/25/50/75/95%)"
        )
    med, p95, mx = s.objects_per_image
    line += f"; {s.instances} objects, {med:g} per image (median), {p95:.0f} (p95), {mx} (max)"
    if s.class_counts:
        line += f"; {len(s.class_counts)} class{'es' if len(s.class_counts) != 1 else ''}"
        if len(s.class_counts) <= 8:
            line += " (" + ", ".join(f"{k} {v}" for k, v in s.class_counts.items()) + ")"
    return line


def _rule_device(b: _Builder, m: Machine) -> bool:
    if m.cuda:
        acc = b.set("trainer.accelerator", "gpu", f"CUDA GPU {m.gpu_name or ''}".rstrip())
    else:
        acc = b.set("trainer.accelerator", "cpu", f"no CUDA GPU: {m.cores} CPU cores")
    return str(acc) in ("gpu", "cuda") or (str(acc) == "auto" and m.cuda)


def _light_crop(cap: int, s: TrainStats, lighten: int) -> int:
    """The native-size crop after ``lighten`` levels: 128 px smaller a level, not below CROP_LIGHT_MIN nor 4x
    the 95% object side (a crop must hold whole objects with context)."""
    floor = max(CROP_LIGHT_MIN, _ceil_step(4 * s.object_side.p95) if s.object_side else CROP_LIGHT_MIN)
    return max(min(cap, floor), cap - 128 * lighten)


@dataclass(frozen=True)
class _Scale:
    native: bool  # keep_size: no resize
    factor_rel: float | None  # resize: object side at train scale = rel side x this (the short side S)
    crop: int | None
    train_hw: tuple[
        float, float
    ]  # a training image (or crop) at train scale, as a batch pads it: (short, long)

    def objects(self, s: TrainStats) -> Quantiles | None:
        if self.native:
            return s.object_side
        if s.object_side_rel is None or self.factor_rel is None:
            return None
        return s.object_side_rel.scaled(self.factor_rel)


def _rule_scale(b: _Builder, s: TrainStats, *, gpu: bool, lighten: int = 0) -> _Scale:
    """Training scale: resize every image to one short side with the median object in the band, or native size
    (with crops of the large images) where resizing cannot keep the objects in the band."""
    cap = GPU_IMAGE_CAP if gpu else CPU_IMAGE_CAP
    lo, hi = OBJECT_BAND
    where = "GPU" if gpu else "CPU"
    s_med, l_med = max(s.short_side.median, 1.0), max(s.long_side.median, 1.0)
    aspect = l_med / s_med
    rel = s.object_side_rel.p50 if s.object_side_rel is not None else None

    def at(short: float) -> float:  # the median object side when every image is resized to this short side
        return (rel or 0.0) * short

    # the resize candidate: the short side that puts the median object at OBJECT_AIM, within the two limits
    if rel is None:
        want, why = s_med, "no objects in the train split: the median image size"
    elif lo <= at(s_med) <= hi:
        want, why = (
            s_med,
            f"median object side {at(s_med):.0f} px at the median short side {s_med:g}, in the band {lo:g}-{hi:g}",
        )
    else:
        want = OBJECT_AIM / rel
        why = (
            f"median object side {at(s_med):.0f} px at the median short side {s_med:g}, outside the band "
            f"{lo:g}-{hi:g} (aim {OBJECT_AIM:g})"
        )
    up, capped = MAX_UPSCALE * s_med, cap / aspect
    if min(up, capped) < want:
        why += (
            f"; the {where} cap of {cap} px" if capped <= up else f"; the {MAX_UPSCALE:g}x upsampling limit"
        )
    short = _round_step(min(want, up, capped))
    while short > SIZE_STEP and short * aspect > cap + 1e-6:
        short -= SIZE_STEP

    keep_user = b.overridden("model.net.keep_size")
    if keep_user is not None:
        native = bool(b.get("model.net.keep_size"))
    elif b.overridden("model.net.min_size") or b.overridden("model.net.max_size"):
        native = False
    else:
        below = rel is not None and at(short) < lo
        native = below and (short < s_med or s.long_side.max > SIZE_VARIATION * l_med)
    if native:
        nat = f"; at native size the median object is {s.object_side.p50:.0f} px" if s.object_side else ""
        if keep_user is not None:
            reason = "train and predict at native size" + nat
        elif short < s_med:
            reason = (
                f"{why}: the images would shrink to {short / s_med:.2f}x and the median object to "
                f"{at(short):.0f} px, below the band: train on native-size crops, predict at native size{nat}"
            )
        else:
            reason = (
                f"{why}: at {short} px it is {at(short):.0f} px, still below the band, and the largest images "
                f"({s.long_side.max:g} px, {s.long_side.max / l_med:.1f}x the median) would shrink more: train "
                f"and predict at native size{nat}"
            )
        b.set("model.net.keep_size", True, reason)
        size = _light_crop(cap, s, lighten)
        need_crop = s.long_side.max > size
        light = (
            f" (lightened {lighten}x from {cap}: fewer than {MIN_STEPS} steps fit the budget)"
            if size < cap
            else ""
        )
        crop = b.set(
            "data.max_crop",
            size if need_crop else None,
            f"random {size} px crops of the images larger than that (up to {s.long_side.max:g} px): the {where} cap{light}"
            if need_crop
            else f"every image fits the {where} cap ({s.long_side.max:g} <= {size} px): whole images",
        )
        c = int(crop) if crop else math.inf
        # a batch is padded to its largest image: the largest crop (or image) is what a step costs
        return _Scale(
            True, None, None if c == math.inf else c, (min(s.short_side.max, c), min(s.long_side.max, c))
        )

    b.set(
        "model.net.keep_size", False, "every image resized to one scale (torchvision's min_size / max_size)"
    )
    chosen = (
        f"{why} -> {at(short):.0f} px at {short} ({short / s_med:.2f}x)"
        if rel is not None
        else f"{why} ({short / s_med:.2f}x)"
    )
    sizes = _multi_scale_sizes(short, rel, capped) if b.get("recipe.multi_scale") else [short]
    if len(sizes) > 1:
        objs = f", the median object {at(min(sizes)):.0f}-{at(max(sizes)):.0f} px" if rel is not None else ""
        chosen += (
            f"; multi-scale (recipe.multi_scale=true): a short side drawn per batch from {min(sizes)}-"
            f"{max(sizes)} px (within {MULTI_SCALE_RANGE:.0%} of {short}{objs}, in the band), tested at {short}"
        )
    elif b.get("recipe.multi_scale"):
        chosen += (
            "; multi-scale (recipe.multi_scale=true): no other short side keeps the median object in the band"
        )
    short_set = b.set("model.net.min_size", sizes if len(sizes) > 1 else short, chosen)
    side = _size_of(short_set) or s_med
    longest = max(int(side), min(_floor_step(cap), _ceil_step(side * aspect)))
    long_set = b.set(
        "model.net.max_size",
        longest,
        f"the median image ({l_med:g}x{s_med:g}) at {side / s_med:.2f}x: {side * aspect:.0f} px long "
        f"(the {where} cap {cap})",
    )
    if b.get("data.max_crop") is not None:
        b.set("data.max_crop", None, "the images are resized, not cropped")
    side = min(
        side, float(long_set or side * aspect) / aspect
    )  # torchvision: min(min_size/short, max_size/long)
    test = _test_size(short_set) or side
    test = min(test, float(long_set or test * aspect) / aspect)
    # objects (anchors) at the test scale; a step costs the largest training scale
    return _Scale(False, test, None, (side, side * aspect))


def _multi_scale_sizes(short: int, rel: float | None, cap_short: float) -> list[int]:
    """The short sides of multi-scale training around ``short`` (:data:`MULTI_SCALE_RANGE`), ``short`` last.

    >>> _multi_scale_sizes(256, 0.18, 384.0), _multi_scale_sizes(192, 28 / 192, 512.0)
    ([192, 224, 288, 320, 256], [224, 192])
    """
    lo, hi = OBJECT_BAND
    out = []
    for k in range(-8, 9):
        z = short + k * SIZE_STEP
        if k == 0 or z < SIZE_STEP or abs(z / short - 1) > MULTI_SCALE_RANGE + 1e-9 or z > cap_short + 1e-6:
            continue
        if rel is not None and not lo <= rel * z <= hi:
            continue
        out.append(z)
    return [*out, short]


def _test_size(value: Any) -> float | None:
    """The short side torchvision tests at: ``min_size`` itself, or the last of a multi-scale list."""
    if isinstance(value, list | tuple):
        return float(value[-1]) if value else None
    return None if value is None else float(value)


def _rule_anchors(b: _Builder, s: TrainStats, scale: _Scale, notes: list[str]) -> None:
    q = scale.objects(s)
    if q is None:
        return
    lo, hi = ANCHOR_FIRST_RANGE
    first = min(max(_pow2_nearest(q.p5), lo), hi)
    sizes = [first * 2**k for k in range(ANCHOR_LEVELS)]
    reach = sizes[-1] * ANCHOR_REACH
    cover = (
        f"the 95% object side {q.p95:.0f} px is within reach of the largest ({sizes[-1]})"
        if q.p95 <= reach
        else f"objects above {reach:.0f} px (the 95% side is {q.p95:.0f}) are matched loosely by the largest ({sizes[-1]})"
    )
    sizes = b.set(
        "model.net.anchor_sizes",
        sizes,
        f"5% object side {q.p5:.1f} px at train scale -> first anchor {first} (the nearest power of two, in {lo}-{hi}), "
        f"doubling per level; {cover}",
    )
    if not sizes or not s.object_side_per_class:
        return
    f = (scale.factor_rel / max(s.short_side.median, 1.0)) if not scale.native and scale.factor_rel else 1.0
    low, high = min(sizes) / ANCHOR_REACH, max(sizes) * ANCHOR_REACH
    outside = [n for n, cq in s.object_side_per_class.items() if not low <= cq.p50 * f <= high]
    if outside:
        notes.append(
            "classes whose median object is outside the anchors' reach "
            f"({low:.0f}-{high:.0f} px): " + ", ".join(outside)
        )


def _rule_detections(b: _Builder, s: TrainStats) -> int:
    most = s.objects_per_image[2]
    det = max(COCO_MAX_DETS, int(math.ceil(DETECTIONS_MARGIN * most)))
    det = int(
        b.set(
            "model.net.box_detections_per_img",
            det,
            f"the most objects in a train image is {most}: {DETECTIONS_MARGIN:g}x that, at least COCO's {COCO_MAX_DETS}",
        )
    )
    if det > COCO_MAX_DETS:
        b.set(
            "model.eval_max_dets",
            None,
            f"up to {det} detections per image: COCO's cap of {COCO_MAX_DETS} would cut crowded images' recall",
        )
    return det


def _rule_rpn(b: _Builder, det: int) -> None:
    post_test = max(RPN_TEST_MIN, RPN_TEST_PER_DETECTION * det)
    post_train = max(RPN_TRAIN_MIN, RPN_TRAIN_PER_DETECTION * det)
    post_test = b.set(
        "model.net.rpn_post_nms_top_n_test",
        post_test,
        f"{RPN_TEST_PER_DETECTION}x the detection cap {det}, at least {RPN_TEST_MIN}",
    )
    b.set(
        "model.net.rpn_pre_nms_top_n_test",
        RPN_PRE_PER_POST * int(post_test),
        f"{RPN_PRE_PER_POST}x the proposals kept after NMS",
    )
    post_train = b.set(
        "model.net.rpn_post_nms_top_n_train",
        post_train,
        f"{RPN_TRAIN_PER_DETECTION}x the detection cap, at least {RPN_TRAIN_MIN}: the pool the RoI sampler draws from",
    )
    b.set(
        "model.net.rpn_pre_nms_top_n_train",
        RPN_PRE_PER_POST * int(post_train),
        f"{RPN_PRE_PER_POST}x the proposals kept after NMS",
    )


def _rule_roi_batch(b: _Builder, s: TrainStats, *, lighten: int = 0) -> None:
    p95 = s.objects_per_image[1]
    lo, hi = ROI_BATCH_RANGE
    n = min(max(_pow2_ceil(ROIS_PER_OBJECT * max(p95, 1.0)), lo), hi)
    why = (
        f"{ROIS_PER_OBJECT} RoIs per object of a crowded image ({p95:.0f} objects, the 95th percentile), "
        f"a power of two in {lo}-{hi}"
    )
    light = max(min(n, ROI_LIGHT_MIN), n >> lighten)
    if light < n:
        why += f"; halved {lighten}x from {n}: fewer than {MIN_STEPS} steps of {n} fit the budget"
    b.set("model.net.box_batch_size_per_image", light, why)


def _rule_mask_head(b: _Builder, *, gpu: bool) -> None:
    configured = b.get("model.net.mask_head_layers")
    weights, in_file = b.get("model.net.weights"), b.get(WEIGHTS_MASK_HEAD)
    named = str(weights).strip().lower() if weights is not None else None  # as the model build reads it
    if in_file is not None:
        value, why = list(in_file), f"the mask head of the weights file ({_show(list(in_file))} channels)"
    elif named not in (None, "imagenet"):
        value, why = configured, f"the pretrained mask head of the weights ({weights}) is kept"
    elif gpu:
        value, why = configured, "torchvision's 4 convs of 256 channels on a GPU"
    else:
        value = list(CPU_MASK_HEAD)
        why = (
            f"{len(CPU_MASK_HEAD)} convs of {CPU_MASK_HEAD[0]} channels, not torchvision's 256: a quarter of the "
            "mask head's FLOPs on every positive RoI and every val detection (on a CPU it outweighs the "
            "backbone; no pretrained head to keep)"
        )
    if in_file is None and configured is not None and value == configured:
        why = "configured"
    b.set("model.net.mask_head_layers", value, why)


def _rule_batch(b: _Builder, s: TrainStats, scale: _Scale, m: Machine, *, gpu: bool) -> tuple[int, int]:
    short, long_ = scale.train_hw
    pixels = short * long_
    if gpu:
        batch, why = GPU_BATCH, f"{GPU_BATCH} images per step on a GPU"
        acc = 1
    elif pixels > LARGE_IMAGE_PIXELS:
        batch, acc = CPU_BATCH // 2, 2
        why = (
            f"training images of {long_:.0f}x{short:.0f} px are large (> {math.isqrt(LARGE_IMAGE_PIXELS)}^2 px): "
            f"{CPU_BATCH // 2} per step, gradients of 2 steps accumulated ({CPU_BATCH} per update)"
        )
    else:
        batch, acc = CPU_BATCH, 1
        why = f"{CPU_BATCH} images of {long_:.0f}x{short:.0f} px per step on a CPU"
    if s.images and batch > s.images:
        batch, acc = s.images, 1
        why = f"only {s.images} train images"
    batch = int(b.set("data.batch_size", batch, why))
    if (
        b.overridden("data.batch_size") is not None
        and b.overridden("trainer.accumulate_grad_batches") is None
    ):
        acc = int(b.get("trainer.accumulate_grad_batches") or 1)
    else:
        acc = int(
            b.set(
                "trainer.accumulate_grad_batches",
                acc,
                "one step per update" if acc == 1 else f"{acc} steps of {batch} images per update",
            )
        )
    return batch, max(acc, 1)


def _probed_step(p: Probe, precision: str) -> float:
    """The probe's step time in ``precision`` (its float32 step where bfloat16 was not timed)."""
    return p.bf16_step_s if str(precision).startswith("bf16") and p.bf16_step_s else p.step_s


def _rule_workers(b: _Builder, m: Machine, precision: str, *, gpu: bool) -> None:
    # Measured (docs/results.md, session 13), 2 cores, 3 min, Lightning's simple profiler, the same recipe with
    # one worker and with none: dsb2018 385 -> 403 steps in 3 pairs, nuts 166 -> 182, synthetic 233 -> 254. The
    # worker slowed the steps' compute by 0.06-0.13 s, about as much or more than the 0.01-0.08 s that loading a
    # batch takes between the steps: a thread that the worker preempts stalls the other at every parallel region.
    if gpu:
        b.set(
            "data.num_workers",
            min(8, max(1, m.cores - 1)),
            f"{m.cores} cores: one per core but one, at most 8",
        )
        return
    threads = m.threads or m.cores
    spare = m.cores - threads
    if spare >= 1:
        b.set(
            "data.num_workers",
            min(spare, MAX_CPU_WORKERS),
            f"{m.cores} cores, {threads} training threads: a loader worker per spare core (at most {MAX_CPU_WORKERS})",
        )
        return
    if b.overridden("data.persistent_workers") is not None and b.get("data.persistent_workers"):
        b.set(
            "data.num_workers", 1, "data.persistent_workers=true (your override) needs a loader worker: one"
        )
        return
    load, p = "", m.probe
    if p is not None and p.data_s is not None:
        share = p.data_s / max(_probed_step(p, precision), 1e-9)
        load = f" (the probe: {p.data_s:.2f} s a batch, {share:.0%} of a step)"
    b.set(
        "data.num_workers",
        0,
        f"the {threads} training threads use all {m.cores} cores: a loader worker would take its CPU from them "
        f"and stall them, so the batches load between the steps{load}",
    )


def _batches_per_epoch(b: _Builder, s: TrainStats, batch: int) -> int:
    """Training batches an epoch: the train images (at most ``data.limit_train``) in batches of ``batch``."""
    n_train = s.images
    if b.get("data.limit_train"):
        n_train = min(n_train, int(b.get("data.limit_train")))
    return max(1, math.ceil(n_train / max(batch, 1)))


def _rule_persistent_workers(b: _Builder, s: TrainStats, batch: int) -> None:
    # Measured (docs/results.md, session 12): nuts at 3 min, 4 steps an epoch, Lightning's simple profiler:
    # 1.35 s a step with the worker forked every epoch, 0.87 s with it kept (the probe's bare step: 0.71-0.76 s).
    workers = int(b.chosen("data.num_workers") or 0)
    if workers <= 0:
        b.set("data.persistent_workers", False, "no loader workers: nothing to keep")
        return
    per_epoch = _batches_per_epoch(b, s, batch)
    b.set(
        "data.persistent_workers",
        True,
        f"the loader's workers live through the run: forked again at every epoch ({per_epoch} steps here) and "
        "validation, each fork makes the training process copy every memory page it writes next",
    )


def _rule_precision(b: _Builder, m: Machine, *, gpu: bool) -> str:
    if gpu:
        precision = b.set("trainer.precision", "16-mixed", "float16 autocast on the GPU (tensor cores)")
        b.set("model.channels_last", False, "a CPU (oneDNN) speed-up")
        return str(precision)
    p = m.probe
    if not m.cpu_bf16:
        precision, why = (
            "32-true",
            "no bfloat16 instructions (AVX512-BF16 or AMX): bfloat16 would be emulated, slower",
        )
    elif p is not None and p.bf16_step_s is not None:
        gain = 1.0 - p.bf16_step_s / p.step_s
        ok = gain >= BF16_MIN_GAIN
        precision = "bf16-mixed" if ok else "32-true"
        why = f"the probe: bfloat16 steps {p.bf16_step_s:.2f} s vs float32 {p.step_s:.2f} s ({gain:+.0%}" + (
            ")" if ok else f", less than {BF16_MIN_GAIN:.0%} faster)"
        )
    else:
        precision, why = "bf16-mixed", "the CPU has bfloat16 instructions (not timed: no probe)"
    precision = b.set("trainer.precision", precision, why)
    bf = str(precision).startswith("bf16")
    b.set(
        "model.channels_last",
        bf,
        "NHWC convolutions, faster with bfloat16 (oneDNN)" if bf else "its CPU speed-up comes with bfloat16",
    )
    return str(precision)


def _val_image_s(p: Probe | None) -> float | None:
    """Seconds a validation spends on one image, averaged over the run's validations: the first fills the
    detection cap (a young model), the later ones find about as many objects as there are."""
    if p is None or not p.infer_s:
        return None
    if p.infer_cap_s is None:
        return p.infer_s
    return (p.infer_cap_s + (VALIDATIONS - 1) * p.infer_s) / VALIDATIONS


def _val_note(p: Probe) -> str:
    if p.infer_cap_s is None:
        return ""
    return (
        f" ({p.infer_s:.2f} s trained, {p.infer_cap_s:.2f} s with the cap filled: the first of {VALIDATIONS})"
    )


def _rule_schedule(
    b: _Builder,
    s: TrainStats,
    m: Machine,
    budget_minutes: float | None,
    batch: int,
    accumulate: int,
    precision: str,
    train_hw: tuple[float, float],
    *,
    gpu: bool,
    notes: list[str],
) -> None:
    minutes = _budget_minutes(b, budget_minutes)
    budget_s = minutes * 60
    batches_per_epoch = _batches_per_epoch(b, s, batch)
    p = m.probe
    if p is not None:
        # the probe ran the recipe's batch; a user's other batch scales its times
        per_batch = batch / max(p.batch_size, 1)
        loaded_by_workers = gpu or bool(b.chosen("data.num_workers"))
        load_s = 0.0 if p.data_s is None or loaded_by_workers else p.data_s * per_batch
        step_s = _probed_step(p, precision) * per_batch + load_s
        source = "predicted"
    elif not gpu:
        pixels = batch * train_hw[0] * train_hw[1]
        step_s = NOMINAL_STEP_S * pixels / NOMINAL_STEP_PIXELS
        source = "estimated without the probe"
    else:
        step_s, source = None, ""
    if m.probe_skipped:
        notes.append(f"probe skipped: {m.probe_skipped}")

    n_val, limit_val, val_s = s.val_images, None, 0.0
    if n_val and b.get("data.limit_val"):
        n_val = min(n_val, int(b.get("data.limit_val")))
    infer_s = _val_image_s(p)
    if infer_s and n_val:
        if VALIDATIONS * n_val * infer_s > VAL_BUDGET_SHARE * budget_s:
            limit_val = max(MIN_VAL_IMAGES, int(VAL_BUDGET_SHARE * budget_s / VALIDATIONS / infer_s))
            limit_val = limit_val if limit_val < n_val else None
        val_s = VALIDATIONS * (limit_val or n_val) * infer_s
    batches = None
    if step_s:
        train_s = max(budget_s - val_s, 0.1 * budget_s)
        batches = train_s / (step_s * STEP_OVERHEAD)
        max_steps = b.get("trainer.max_steps")
        if b.overridden("trainer.max_steps") is not None and max_steps and int(max_steps) > 0:
            batches = min(batches, int(max_steps) * accumulate)
        b.steps = batches / accumulate
        line = f"~{batches / accumulate:.0f} steps ({batches / batches_per_epoch:.1f} epochs) fit in {minutes:g} min"
        if p is not None:
            size = f" (largest {p.image_size[1]}x{p.image_size[0]} px)" if p.image_size else ""
            val = f"; {infer_s:.2f} s to predict a val image{_val_note(p)}" if infer_s else ""
            loaded = f" with {load_s:.2f} s of loading" if load_s else ""
            notes.append(
                f"probe: {p.steps} step{'s' if p.steps != 1 else ''} of {p.batch_size} images{size}: {step_s:.2f} s a step{loaded} ({precision}){val}; "
                + line
            )
        else:
            notes.append(
                f"no probe: a step assumed {step_s:.1f} s ({NOMINAL_STEP_S:g} s per {NOMINAL_STEP_PIXELS / 192**2:g} "
                f"images of 192x192 px, scaled by pixels); " + line
            )

    if gpu:
        clock = b.set(
            "trainer.max_time",
            None,
            "on a GPU the epochs, not the clock, end the run (reproducible step for step)",
        )
    else:
        clock = b.set("trainer.max_time", _max_time(budget_s), f"the budget: {minutes:g} min of training")
    b.set(
        "model.scheduler.by_time",
        clock is not None,
        "the cosine decay ends when the budget does, however fast the machine"
        if clock is not None
        else "the cosine decay follows the steps",
    )
    b.set("model.scheduler.name", "cosine", "warm-up then cosine decay")
    if clock is not None:
        if batches:
            bound = b.set(
                "trainer.max_epochs",
                max(1, int(math.ceil(EPOCHS_MARGIN * batches / batches_per_epoch))),
                f"{EPOCHS_MARGIN:g}x the {batches / batches_per_epoch:.1f} epochs {source}: the clock ends the run",
            )
        else:
            bound = b.set("trainer.max_epochs", b.get("trainer.max_epochs"), "configured: an upper bound")
        total = batches if batches else int(bound or 1) * batches_per_epoch
    else:
        if batches:
            epochs, why = max(1, int(batches // batches_per_epoch)), f"the epochs {source} in {minutes:g} min"
        else:
            epochs, why = int(b.get("trainer.max_epochs") or 1), "configured"
        every = max(1, epochs // VALIDATIONS)
        epochs = max(
            every, epochs // every * every
        )  # a multiple of the validation interval: the last validates
        epochs = int(b.set("trainer.max_epochs", epochs, why) or 1)
        total = epochs * batches_per_epoch
    run_epochs = int(bound or 1) if clock is not None else epochs
    steps = total / accumulate
    b.set(
        "model.scheduler.warmup_steps",
        min(WARMUP_MAX, max(1, int(round(WARMUP_SHARE * steps)))),
        f"{WARMUP_SHARE:.0%} of the ~{steps:.0f} steps {source or 'configured'}, at most {WARMUP_MAX}",
    )
    if clock is not None and m.time_validation:
        every_s = (parse_max_time(clock) or budget_s) / VALIDATIONS
        b.set("trainer.check_val_every_n_epoch", 1, "validation by the clock, not by epochs")
        b.set(
            "trainer.val_check_interval",
            _max_time(every_s),
            f"every {every_s / 60:.1f} min of the clock: ~{VALIDATIONS} validations, the last when the clock stops",
        )
    elif clock is not None:  # a Lightning without validation by the clock: by batches across epochs
        interval = max(1, int(total // VALIDATIONS))
        b.set("trainer.check_val_every_n_epoch", None, "validation by batches across epochs")
        b.set(
            "trainer.val_check_interval",
            interval,
            f"every {interval} batches: ~{VALIDATIONS} validations in the {total:.0f} batches {source}, "
            "and one when the clock stops",
        )
    else:
        every = max(1, run_epochs // VALIDATIONS)
        b.set(
            "trainer.check_val_every_n_epoch",
            every,
            f"~{VALIDATIONS} validations, the last at the last epoch",
        )
        b.set("trainer.val_check_interval", None, "at the end of an epoch")
    if limit_val is not None:
        b.set(
            "data.limit_val",
            limit_val,
            f"{n_val} val images at {infer_s:.2f} s each would take {VALIDATIONS * n_val * infer_s / 60:.1f} of "
            f"the {minutes:g} min in {VALIDATIONS} validations ({VAL_BUDGET_SHARE:.0%} allowed): validate on the "
            f"first {limit_val}; the final evaluation uses all",
        )


def _rule_weights(b: _Builder, s: TrainStats, notes: list[str]) -> None:
    w = b.get("model.net.weights")
    why = (
        "from scratch (configured; model.net.weights=imagenet, coco or a file fine-tunes pretrained weights)"
        if w is None
        else f"fine-tune pretrained weights ({w}, configured)"
    )
    b.set("model.net.weights", w, why)
    if w is None and s.images < TINY_DATASET:
        notes.append(
            f"only {s.images} train images: from scratch the model learns little; pretrained weights "
            "(model.net.weights=imagenet or coco, when you can download them) help most here"
        )
    few = [f"{n} ({c})" for n, c in s.class_counts.items() if c < FEW_INSTANCES]
    if few:
        notes.append(f"classes with fewer than {FEW_INSTANCES} train instances (noisy AP): " + ", ".join(few))


def _rule_repeat_factor(b: _Builder, s: TrainStats) -> None:
    t = REPEAT_FACTOR_THRESHOLD
    share = {n: c / s.images for n, c in s.class_images.items() if c > 0} if s.images else {}
    rare = sorted((f, n) for n, f in share.items() if f < t)
    if rare:
        f, name = rare[0]
        why = (
            f"{len(rare)} of {len(share)} classes in fewer than {t:.0%} of the train images ({name} in {f:.0%}): "
            f"their images drawn up to {math.sqrt(t / f):.1f}x an epoch (LVIS repeat-factor sampling)"
        )
        b.set("data.repeat_factor_threshold", t, why)
    elif share:
        configured = b.get("data.repeat_factor_threshold")
        why = f"every class is in at least {t:.0%} of the train images: the plain shuffle"
        b.set(
            "data.repeat_factor_threshold", configured, why if configured is None else why + " (configured)"
        )


def with_probe(machine: Machine, probe: Probe | None, skipped: str | None = None) -> Machine:
    """``machine`` with a probe's result (or the reason none ran)."""
    return replace(machine, probe=probe, probe_skipped=skipped)


# --------------------------------------------------------------------------------------------------
# The saved recipe: an experiment config
# --------------------------------------------------------------------------------------------------


def experiment_yaml(
    values: Sequence[tuple[str, Any, str | None]],
    *,
    defaults: Sequence[str] = (),
    header: Sequence[str] = (),
) -> str:
    """An experiment config (``# @package _global_``) that sets ``values``, each with its reason as a comment.

    Parameters
    ----------
    values
        ``(dotted key, value, comment)`` in order; keys sharing a prefix are written together.
    defaults
        Lines of the defaults list, e.g. ``"override /data: coco"``.
    header
        Comment lines at the top.

    Examples
    --------
    >>> print(experiment_yaml([("model.net.min_size", 256, "why"), ("name", "auto", None)]))
    # @package _global_
    model:
      net:
        min_size: 256  # why
    name: auto
    <BLANKLINE>
    """
    import yaml

    tree: dict = {}
    for key, value, comment in values:
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: a parent key already holds a value")
        node[parts[-1]] = (value, comment)

    def scalar(v: Any) -> str:
        if (
            isinstance(v, str) and ":" in v
        ):  # "00:00:15:00": quoted, as YAML 1.1 reads some of these as numbers
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        text = yaml.safe_dump(v, default_flow_style=True, width=10**6, allow_unicode=True).strip()
        return text.removesuffix("\n...").removesuffix("...").strip()

    def emit(node: dict, indent: int, out: list[str]) -> None:
        for k, v in node.items():
            pad = "  " * indent
            if isinstance(v, dict):
                out.append(f"{pad}{k}:")
                emit(v, indent + 1, out)
            else:
                value, comment = v
                line = f"{pad}{k}: {scalar(value)}"
                if comment:
                    line += "  # " + " ".join(str(comment).split())
                out.append(line)

    lines = ["# @package _global_", *(f"# {h}" if h else "#" for h in header)]
    if defaults:
        lines.append("defaults:")
        lines += [f"  - {d}" for d in defaults]
    emit(tree, 0, lines)
    return "\n".join(lines) + "\n"
