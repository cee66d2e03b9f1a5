"""Run a trained model, an exported model or a classical baseline on a folder of images.

``segbench predict ckpt_path=FILE input=PATH output=DIR`` writes into ``output``:

* ``predictions.json`` — COCO results (``image_id``, ``category_id`` with the training dataset's original
  category ids, ``bbox`` xywh, ``score``, ``segmentation`` as compressed RLE);
* ``images.json`` — ``{file name: {"id", "height", "width"}}`` for the images that were processed;
* ``categories.json`` — the COCO ``categories`` (ids and names) the results refer to;
* ``summary.json`` — counts, the skipped files and why;
* ``overlays/<name>.png`` — the image with coloured masks, outlines and ``class score`` labels;
* ``masks/<name>_<k>.png`` — one 0/255 PNG per instance (``save_masks=true``), ``k`` in score order.

``precision=bf16`` runs a checkpoint under bfloat16 autocast with channels_last weights,
``proposals=auto|N`` sets its RPN proposals per image, ``profile=true`` adds the time of each stage to
the summary, ``num_threads`` sets torch's threads for the run; images are decoded in a background thread.

The source is one of: a segbench checkpoint (``ckpt_path``), a TorchScript / ONNX export
(``exported``, with the ``model.json`` written beside it), or a baseline (``method=NAME`` and/or
``baseline_params=FILE``, a fitted baseline saved by ``segbench compare``). A file that cannot be read is
logged (name and reason) and skipped.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbench.eval.analysis import DEFAULT_SCORE_THRESHOLD, lowest_kept_score
from segbench.types import Instances, SegbenchError

log = logging.getLogger(__name__)

__all__ = [
    "Predictor",
    "collect_images",
    "draw_overlay",
    "format_profile",
    "load_predictor",
    "predict_images",
    "torch_threads",
    "with_tiling",
]


# --------------------------------------------------------------------------------------------------
# Input files
# --------------------------------------------------------------------------------------------------
def collect_images(source: str | os.PathLike) -> tuple[list[Path], Path]:
    """The image files named by ``source`` and the folder their names are relative to.

    ``source`` is an image file, a folder (its image files, not recursive) or a glob pattern
    (``"data/*.jpg"``, ``"scans/**/*.png"``). Files are sorted by name; in a folder, only files with
    an image extension (``.png``, ``.jpg``, ``.tif``...) count.
    """
    from segbench.data.coco import IMAGE_EXTENSIONS

    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SegbenchError(
                f"no image files in {path} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "pass an image file, a folder of images or a glob like 'dir/*.png' as input="
            )
        return files, path
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        files = [p for p in files if p.is_file()]
        if not files:
            raise SegbenchError(f"input={text} matches no file")
        root = Path(os.path.commonpath([str(p.parent.resolve()) for p in files]))
        return files, root
    raise SegbenchError(f"input={text} does not exist (expected an image file, a folder or a glob pattern)")


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def _output_stems(names: Sequence[str]) -> list[str]:
    """A unique, flat file stem per image name (``a/b.png`` -> ``a__b``; ``x.png`` + ``x.jpg`` -> ``x_png``...)."""
    plain = [str(Path(n).with_suffix("")).replace("/", "__") for n in names]
    counts: dict[str, int] = {}
    for s in plain:
        counts[s] = counts.get(s, 0) + 1
    return [
        n.replace("/", "__").replace(".", "_") if counts[s] > 1 else s
        for n, s in zip(names, plain, strict=True)
    ]


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------
@dataclass
class Predictor:
    """A segmenter with what is needed to write its results.

    Attributes
    ----------
    segment : callable
        ``list of (H, W, 3) uint8 images -> list of Instances`` (labels ``1..K``, scores, masks); called
        as ``segment(images, profile=timer)`` when the run is profiled (a
        :class:`~segbench.models.segmenter.StageTimer` that it adds its stages to).
    categories : list of dict
        COCO categories (``id``, ``name``) of the results.
    label_to_cat_id : dict
        Label ``1..K`` -> category id.
    source : str
        What runs, for the logs and ``summary.json``.
    info : dict
        ``model_size``: a model's test resize ``(min_size, max_size)`` (None: no resize), which
        ``tile=auto`` decides by (:func:`with_tiling`); absent for baselines.
    """

    segment: Callable[[list[np.ndarray]], list[Instances]]
    categories: list[dict]
    label_to_cat_id: dict[int, int]
    source: str
    info: dict = field(default_factory=dict)
    #: Label -> the score threshold calibrated on the val split after training (best F1 at IoU 0.5).
    score_thresholds: dict[int, float] = field(default_factory=dict)

    def keep(self, inst: Instances, score_threshold: float | None) -> Instances:
        """The detections to report: ``score >= score_threshold`` when it is given, else each label's
        calibrated threshold (0.5 for a label without one)."""
        if inst.scores is None or not len(inst):
            return inst
        if score_threshold is not None or not self.score_thresholds:
            cut = DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold
            return inst.select(inst.scores >= cut)
        cut = np.asarray(
            [self.score_thresholds.get(int(lbl), DEFAULT_SCORE_THRESHOLD) for lbl in inst.labels]
        )
        return inst.select(inst.scores >= cut)

    def lowest_kept_score(self, score_threshold: float | None) -> float:
        """The lowest score :meth:`keep` can keep with ``score_threshold``."""
        return lowest_kept_score(self.score_thresholds.values(), score_threshold)

    def label_names(self) -> dict[int, str]:
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in self.categories}
        return {lbl: by_id.get(cat, str(cat)) for lbl, cat in self.label_to_cat_id.items()}


def _thresholds_from(card: dict) -> dict[int, float]:
    """Label -> calibrated threshold from a card's ``score_thresholds`` (by class name)."""
    by_name = card.get("score_thresholds") or {}
    names = list(card.get("class_names") or [])
    return {k + 1: float(by_name[n]) for k, n in enumerate(names) if by_name.get(n) is not None}


def _categories_from(meta: dict) -> tuple[list[dict], dict[int, int]]:
    names = list(meta.get("class_names") or [])
    cats = [dict(c) for c in meta.get("categories") or []] or [
        {"id": i + 1, "name": n} for i, n in enumerate(names)
    ]
    l2c = {int(k): int(v) for k, v in (meta.get("label_to_cat_id") or {}).items()}
    if not l2c:
        l2c = {i + 1: int(c["id"]) for i, c in enumerate(cats)}
    return cats, l2c


def load_predictor(
    *,
    ckpt_path: str | os.PathLike | None = None,
    exported: str | os.PathLike | None = None,
    method: str | None = None,
    baseline_params: str | os.PathLike | None = None,
    mask_threshold: float | None = None,
    device: str = "cpu",
    score_threshold: float | None = None,
    precision: str = "fp32",
    proposals: int | str | None = None,
) -> Predictor:
    """Open exactly one source: a checkpoint, an exported model, or a baseline.

    Parameters
    ----------
    ckpt_path
        A checkpoint written by ``segbench train``.
    exported
        A TorchScript (``.pt``/``.ts``) or ONNX (``.onnx``) file written by ``segbench export``.
    method, baseline_params
        A baseline name (``sobel``, ``kmeans``...) and/or the JSON of a fitted baseline. Without
        ``baseline_params`` the baseline runs unfitted (its documented per-image heuristics).
    mask_threshold
        Mask probability threshold; ``None``: the one the model was trained with.
    device
        ``cpu`` or ``cuda`` (models only).
    score_threshold
        The threshold :func:`predict_images` will apply (``None``: the calibrated ones): a checkpoint's
        model then skips the masks of the boxes below it (below the lowest calibrated threshold in the
        RoI heads, then below each class's own before the mask head).
    precision
        ``fp32`` or ``bf16`` (bfloat16 autocast + channels_last; checkpoints only; a warning where the
        CPU has no bfloat16 instructions: it then runs, slower).
    proposals
        RPN proposals per image for a checkpoint: ``None`` (the model's own), a number, or ``auto``
        (:func:`segbench.models.segmenter.proposals_for`).
    """
    given = [n for n, v in (("ckpt_path", ckpt_path), ("exported", exported)) if v]
    if method or baseline_params:
        given.append("method/baseline_params")
    if len(given) != 1:
        raise SegbenchError(
            "pass exactly one source: ckpt_path=FILE (a checkpoint), exported=FILE (a .onnx / TorchScript export) "
            f"or method=NAME [baseline_params=FILE] (a baseline); got {', '.join(given) or 'none'}"
        )
    if not ckpt_path:
        for key, value, default in (("precision", precision, "fp32"), ("proposals", proposals, None)):
            if value != default:
                raise SegbenchError(
                    f"{key}={value} applies to a checkpoint (ckpt_path=); an export or a baseline runs as it "
                    f"was built: drop {key}= (or pass ckpt_path=)"
                )
    if ckpt_path:
        from segbench.models.checkpoint import build_kwargs
        from segbench.models.segmenter import MaskRCNNSegmenter
        from segbench.tiling import model_size

        seg, meta = MaskRCNNSegmenter.from_checkpoint(
            ckpt_path, device=device, precision=precision, proposals=proposals
        )
        seg.mask_threshold = _mask_threshold(meta, mask_threshold)
        cats, l2c = _categories_from(meta)
        source = f"checkpoint {ckpt_path}" + (f" ({precision})" if precision != "fp32" else "")
        if seg.proposals is not None:
            source += f" ({seg.proposals} proposals)"
        predictor = Predictor(
            seg.predict_batch,
            cats,
            l2c,
            source,
            info={"model_size": model_size(build_kwargs(meta))},
            score_thresholds=_thresholds_from(meta),
        )
        # no mask for a box below every threshold that will be applied: it would be thrown away
        seg.score_threshold = predictor.lowest_kept_score(score_threshold)
        if score_threshold is None:  # then below its own class's threshold, before the mask head too
            seg.class_thresholds = {
                lbl: predictor.score_thresholds.get(lbl, DEFAULT_SCORE_THRESHOLD) for lbl in l2c
            }
        return predictor
    if exported:
        from segbench.export import load_exported_model
        from segbench.models.segmenter import runtime_segmenter
        from segbench.tiling import model_size

        runtime, card = load_exported_model(exported, device=device)
        cats, l2c = _categories_from(card)
        thr = _mask_threshold(card, mask_threshold)
        predictor = Predictor(
            runtime_segmenter(runtime, thr),
            cats,
            l2c,
            f"{runtime.name} export {exported}",
            info={"model_size": model_size(card["build"])},
            score_thresholds=_thresholds_from(card),
        )
        floor = card.get("score_floor")
        if floor is not None and predictor.lowest_kept_score(score_threshold) < float(floor) - 1e-9:
            raise SegbenchError(
                f"score_threshold={predictor.lowest_kept_score(score_threshold):g} is below the score_floor "
                f"{float(floor):g} that {exported} was exported with: its graph drops every box under "
                f"{float(floor):g}; pass score_threshold >= {float(floor):g}, or export again with score_floor=null"
            )
        return predictor
    from segbench.baselines import build_baseline, load_baseline

    if baseline_params:
        try:
            seg = load_baseline(baseline_params)
        except (OSError, ValueError) as e:
            raise SegbenchError(f"cannot load baseline_params={baseline_params}: {e}") from None
        if method and method != seg.name:
            raise SegbenchError(
                f"baseline_params={baseline_params} holds a fitted {seg.name!r} baseline, not method={method!r}; "
                f"drop method= or pass method={seg.name}"
            )
    else:
        try:
            seg = build_baseline(method)
        except ValueError as e:
            raise SegbenchError(str(e)) from None
        log.warning(
            "baseline %s runs unfitted (per-image heuristics); pass baseline_params=FILE with the fitted "
            "baseline that `segbench compare` saved for results like those in its report",
            method,
        )

    def segment(images: list[np.ndarray], profile=None) -> list[Instances]:
        with profile.stage("run") if profile is not None else contextlib.nullcontext():
            return [seg(im) for im in images]

    cats = [{"id": 1, "name": "object"}]
    return Predictor(segment, cats, {1: 1}, f"baseline {seg.name}" + (" (fitted)" if seg.is_fitted else ""))


def _mask_threshold(card: dict, override: float | None) -> float:
    if override is not None:
        return float(override)
    return float(card.get("mask_threshold", 0.5))


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------
def draw_overlay(
    image: np.ndarray, inst: Instances, names: dict[int, str] | None = None, *, alpha: float = 0.45
) -> np.ndarray:
    """The image with each instance's mask tinted and outlined (:func:`segbench.report.plots.draw_instances`)
    and a ``name score`` label in the instance's colour at its box.

    Parameters
    ----------
    image : uint8 (H, W, 3)
    inst : Instances with masks (and scores)
    names : label -> class name (default: the label number)

    Returns
    -------
    uint8 (H, W, 3)
    """
    from PIL import Image, ImageDraw, ImageFont

    from segbench.report.plots import draw_instances, instance_colours

    n = len(inst)
    pil = Image.fromarray(draw_instances(image, inst, alpha=alpha))
    if n == 0:
        return np.asarray(pil)
    colours = np.rint(instance_colours(n) * 255).astype(int)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    h, w = image.shape[:2]
    for k in range(n):
        lbl = int(inst.labels[k])
        text = (names or {}).get(lbl, str(lbl))
        if inst.scores is not None:
            text += f" {float(inst.scores[k]):.2f}"
        x1, y1 = float(inst.boxes[k, 0]), float(inst.boxes[k, 1])
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        x = int(min(max(x1, 0), max(w - tw - 2, 0)))
        y = int(y1 - th - 3 if y1 - th - 3 >= 0 else min(max(y1, 0), max(h - th - 3, 0)))
        colour = tuple(int(c) for c in colours[k])
        draw.rectangle((x, y, x + tw + 2, y + th + 2), fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text(
            (x + 1 - left, y + 1 - top),
            text,
            fill=(0, 0, 0) if luminance > 140 else (255, 255, 255),
            font=font,
        )
    return np.asarray(pil)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def with_refinement(predictor: Predictor, params_file: str | os.PathLike) -> Predictor:
    """``predictor`` whose masks are refined against each image's edges (the fitted refinement that
    ``segbench compare refine=edges`` saved as ``baselines/maskrcnn+refine.json``)."""
    from segbench.baselines.refine import EdgeRefiner

    try:
        refiner = EdgeRefiner.load(params_file)
    except ValueError as e:
        raise SegbenchError(f"refine_params={params_file}: {e}") from None
    segment = predictor.segment

    def refined(images: list[np.ndarray], profile=None) -> list[Instances]:
        found = segment(images) if profile is None else segment(images, profile=profile)
        with profile.stage("refine") if profile is not None else contextlib.nullcontext():
            return [refiner(im, inst) for im, inst in zip(images, found, strict=True)]

    state = "on" if refiner.enabled else "off (the fit found it does not help)"
    return Predictor(
        refined,
        predictor.categories,
        predictor.label_to_cat_id,
        f"{predictor.source} + edge refinement {state}",
        info=predictor.info,
        score_thresholds=predictor.score_thresholds,
    )


def with_tiling(
    predictor: Predictor, *, tile: int | str | None, overlap: int | None = None, batch_size: int = 4
) -> Predictor:
    """``predictor`` run by tiles on the images that need it (:class:`segbench.tiling.TiledSegmenter`).

    ``tile``: the tile side in pixels, ``"auto"`` (:func:`segbench.tiling.auto_tile`: by the model's test
    resize, ``info["model_size"]``, or for a baseline by the pixel count) or None (``predictor`` as it
    is); ``overlap``: pixels shared by neighbouring tiles (None: 1/8 of the tile). The tiles of an image go
    through the network ``batch_size`` at a time. Wrap last: a refined predictor
    (:func:`with_refinement`) is then refined tile by tile.
    """
    from segbench.tiling import TiledSegmenter, check_tiling

    tile, overlap = check_tiling(tile, overlap)
    if tile is None:
        return predictor
    seg = TiledSegmenter(
        predictor.segment,
        tile=tile,
        overlap=overlap,
        model_size=predictor.info.get("model_size"),
        tiles_per_call=batch_size,
    )
    log.info("large images by tiles: %s", seg.describe())
    return Predictor(
        seg.predict_batch,
        predictor.categories,
        predictor.label_to_cat_id,
        f"{predictor.source}, {seg.describe()}",
        info=predictor.info,
        score_thresholds=predictor.score_thresholds,
    )


def _threshold_used(predictor: Predictor, score_threshold: float | None) -> float | dict:
    """What ``summary.json`` reports: the one threshold, or the calibrated one of each class."""
    if score_threshold is not None or not predictor.score_thresholds:
        return 0.5 if score_threshold is None else float(score_threshold)
    names = predictor.label_names()
    return {names.get(lbl, str(lbl)): t for lbl, t in sorted(predictor.score_thresholds.items())}


def _check_num_threads(num_threads: int | None) -> None:
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise SegbenchError(
            f"num_threads must be a positive integer or null (torch's default), got {num_threads!r}"
        )


@contextlib.contextmanager
def torch_threads(num_threads: int | None):
    """``torch.set_num_threads(num_threads)`` for the ``with`` block only (``None``: unchanged)."""
    _check_num_threads(num_threads)
    if num_threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: The order in which :func:`format_profile` lists the stages.
STAGE_ORDER = (
    "decode",
    "preprocess",
    "backbone",
    "rpn",
    "box_head",
    "mask_head",
    "paste",
    "rle",
    "run",
    "paste+rle",
    "refine",
    "tiles",
    "write",
)


def format_profile(profile: dict) -> str:
    """The per-stage table of ``summary["profile"]`` (ms per image and share of the stages' sum)."""
    stages = profile["stages"]
    names = [n for n in STAGE_ORDER if n in stages] + [n for n in stages if n not in STAGE_ORDER]
    lines = [f"{'stage':<12} {'ms/image':>10} {'%':>6}"]
    for n in names:
        lines.append(f"{n:<12} {stages[n]['ms_per_image']:>10.2f} {stages[n]['percent']:>6.1f}")
    lines.append(f"{'sum':<12} {profile['total_ms_per_image']:>10.2f} {100.0:>6.1f}")
    lines.append(
        f"wall time {profile['wall_ms_per_image']:.2f} ms/image over {profile['images']} image(s); decode and "
        f"write run in background threads beside the model (the model waited "
        f"{profile['wait_ms_per_image']:.2f} ms/image for images)"
    )
    return "\n".join(lines)


def predict_images(
    predictor: Predictor,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    score_threshold: float | None = None,
    batch_size: int = 4,
    num_threads: int | None = None,
    save_overlays: bool = True,
    save_masks: bool = False,
    progress: bool = True,
    profile: bool = False,
) -> dict:
    """Predict every image of ``source`` (file, folder or glob) and write the results to ``output``.

    Unreadable files are logged with the reason and skipped. Detections scoring below
    ``score_threshold`` are dropped (from every file written); ``None``: below each class's calibrated
    threshold (:meth:`Predictor.keep`; 0.5 where the model has none).

    The next ``batch_size`` images are read and decoded in a background thread while the model runs on
    the current batch, and the previous batch's files are written in another, so the model does not wait
    for the disk. ``num_threads``: torch's intra-op threads for this call (``None``: torch's default, one
    per core), restored afterwards. ``profile``: time every stage (:class:`~segbench.models.segmenter.StageTimer`)
    and add the split to the summary as ``profile`` (:func:`format_profile` prints it).

    Returns
    -------
    dict
        The summary written to ``summary.json``: ``processed``, ``skipped`` (``[{"file", "reason"}]``),
        ``detections`` and the paths written (and ``profile``).

    Raises
    ------
    SegbenchError
        No image could be read (or ``source`` names none).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from segbench.io import write_json

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SegbenchError(f"batch_size must be a positive integer, got {batch_size!r}")
    if score_threshold is not None and not 0.0 <= float(score_threshold) <= 1.0:
        raise SegbenchError(
            f"score_threshold must be in [0, 1] or null (calibrated), got {score_threshold!r}"
        )
    _check_num_threads(num_threads)
    files, root = collect_images(source)
    names = [_relative_name(p, root) for p in files]
    stems = _output_stems(names)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if save_overlays:
        (out / "overlays").mkdir(exist_ok=True)
    if save_masks:
        (out / "masks").mkdir(exist_ok=True)
    label_names = predictor.label_names()
    log.info("predicting %d image(s) from %s with %s", len(files), source, predictor.source)
    timer = None
    if profile:
        from segbench.models.segmenter import StageTimer

        timer = StageTimer()

    def stage(name: str):  # baselines run without importing torch: no segmenter helper here
        return timer.stage(name) if timer is not None else contextlib.nullcontext()

    results: list[dict] = []
    images_index: dict[str, dict] = {}
    skipped: list[dict] = []

    def read(start: int) -> list[tuple[int, np.ndarray | None, str | None]]:
        from segbench.data.coco import read_image

        batch = []
        with stage("decode"):
            for i in range(start, min(start + batch_size, len(files))):
                try:
                    batch.append((i, read_image(files[i]), None))
                except SegbenchError as e:
                    batch.append((i, None, str(e).split(". The file is")[0]))
        return batch

    def write(items: list[tuple[int, int, np.ndarray, Instances]]) -> None:
        from PIL import Image

        from segbench.eval.metrics import instances_to_results

        with stage("write"):
            for i, image_id, image, inst in items:
                results.extend(instances_to_results(inst, image_id, predictor.label_to_cat_id))
                if save_overlays:
                    Image.fromarray(draw_overlay(image, inst, label_names)).save(
                        out / "overlays" / f"{stems[i]}.png"
                    )
                if save_masks and len(inst):
                    for k, m in enumerate(inst.get_masks()):
                        Image.fromarray(m.astype(np.uint8) * 255).save(out / "masks" / f"{stems[i]}_{k}.png")

    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not progress)
    wait = 0.0
    t_start = time.perf_counter()
    # one reader and one writer thread: decoding and PNG writing release the GIL, so they overlap the
    # model (torch's own threads) instead of leaving its cores idle between batches
    with (
        torch_threads(num_threads),
        ThreadPoolExecutor(1, "predict-read") as reader,
        ThreadPoolExecutor(1, "predict-write") as writer,
    ):
        starts = list(range(0, len(files), batch_size))
        pending = reader.submit(read, starts[0]) if starts else None
        written = None
        for k in range(len(starts)):
            t0 = time.perf_counter()
            batch = pending.result()
            wait += time.perf_counter() - t0
            pending = reader.submit(read, starts[k + 1]) if k + 1 < len(starts) else None
            for i, _, reason in batch:
                if reason is not None:
                    log.warning("skipped %s: %s", names[i], reason)
                    skipped.append({"file": names[i], "reason": reason})
            batch = [(i, im) for i, im, reason in batch if reason is None]
            images = [im for _, im in batch]
            if not images:
                preds = []
            elif timer is None:
                preds = predictor.segment(images)
            else:
                preds = predictor.segment(images, profile=timer)
            items = []
            for (i, image), inst in zip(batch, preds, strict=True):
                inst = predictor.keep(inst, score_threshold)
                image_id = len(images_index) + 1
                h, w = image.shape[:2]
                images_index[names[i]] = {"id": image_id, "height": h, "width": w}
                items.append((i, image_id, image, inst))
            if written is not None:
                written.result()  # one batch in writing at a time (memory); raises its error here
            written = writer.submit(write, items)
            bar.update(min(batch_size, len(files) - starts[k]))
        if written is not None:
            written.result()
    wall = time.perf_counter() - t_start
    bar.close()

    summary = {
        "source": predictor.source,
        "input": os.fspath(source),
        "processed": len(images_index),
        "skipped": skipped,
        "detections": len(results),
        "score_threshold": _threshold_used(predictor, score_threshold),
        "batch_size": batch_size,
        "num_threads": num_threads,
        "predictions": str(out / "predictions.json"),
    }
    if timer is not None:
        timer.images = len(images_index)
        n = max(len(images_index), 1)
        summary["profile"] = {
            **timer.summary(),
            "wall_ms_per_image": 1000 * wall / n,
            "wait_ms_per_image": 1000 * wait / n,
        }
    if not images_index:
        write_json(out / "summary.json", summary)
        raise SegbenchError(
            f"none of the {len(files)} image(s) could be read: "
            + "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
        )
    write_json(out / "predictions.json", results)
    write_json(out / "images.json", images_index)
    write_json(out / "categories.json", predictor.categories)
    write_json(out / "summary.json", summary)
    return summary
