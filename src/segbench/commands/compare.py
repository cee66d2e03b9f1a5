"""``segbench compare data.root=DIR [ckpt_path=FILE] [methods=[maskrcnn,threshold,kmeans]]``."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segbench.commands._common import open_data_split
from segbench.tiling import check_tiling, model_size, tiled
from segbench.types import SegbenchError

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> int:
    """Score the model and the classical baselines on one split; write the leaderboard, figures and report.

    Baselines are fitted on ``fit_split`` (at most ``fit_images`` images) — or loaded from
    ``baseline_params_dir`` (e.g. the ``baselines/`` folder of an earlier run) — and scored with the model
    by the same evaluator. Segm AP is class-agnostic for every method; the model's F1 / PQ / foreground IoU
    count its detections with ``score >= score_threshold``, the baselines' count all their detections.

    Keys: data.root, methods (null: maskrcnn when ckpt_path is given, and every baseline), ckpt_path,
    split, fit_split, fit_images, baseline_params_dir, baselines.<name>.<option>, out, max_dets,
    score_threshold, bootstrap (resamples; 0 skips), bootstrap_seed, overlays, limit, device, label_errors
    (list the labels that the model and the baselines contradict, with a COCO patch), refine (edges: add
    maskrcnn+refine, the model's masks snapped to the image's edges, fitted on fit_split), refine_params
    (a fitted baselines/refine.json of an earlier run instead of fitting), tile (null | N | auto: every
    method runs on overlapping tiles of N px, instances merged across the seams; the baselines are still
    fitted on whole images), overlap (pixels shared by neighbouring tiles; null: 1/8 of the tile).
    """
    from segbench.baselines.refine import RefinedSegmenter
    from segbench.eval import compare as cmp
    from segbench.models.checkpoint import build_kwargs, check_classes
    from segbench.models.segmenter import MaskRCNNSegmenter, resolve_device
    from segbench.report import write_report
    from segbench.report.tables import format_analysis, format_bootstrap, format_leaderboard

    tile, overlap = check_tiling(cfg.get("tile"), cfg.get("overlap"))

    def by_tiles(segmenter, size=None):
        if tile is None:
            return segmenter
        return tiled(segmenter, tile=tile, overlap=overlap, model_size=size)

    ckpt_path = cfg.get("ckpt_path")
    methods = cmp.check_methods(cfg.get("methods"), has_model=bool(ckpt_path))
    for w in cmp.setup_warnings(
        methods,
        has_model=bool(ckpt_path),
        split=cfg.split,
        fit_split=cfg.fit_split,
        params_dir=cfg.get("baseline_params_dir"),
    ):
        log.warning(w)
    baseline_names = [m for m in methods if m != cmp.MODEL]

    dataset = open_data_split(cfg.data, cfg.split)
    if len(dataset) == 0:
        raise SegbenchError(f"split '{cfg.split}' ({dataset.ann_file}) has no images to score")
    specs = []
    if cmp.MODEL in methods:
        seg, card = MaskRCNNSegmenter.from_checkpoint(
            ckpt_path, device=resolve_device(cfg.get("device", "auto"))
        )
        check_classes(card, dataset, source=ckpt_path, action="compare")
        size = model_size(build_kwargs(card))
        model = by_tiles(seg, size)
        specs.append(cmp.MethodSpec(cmp.MODEL, model, kind="model", score_threshold=cfg.score_threshold))
        if cfg.get("refine") == "edges":
            params = cfg.get("refine_params")
            refiner = cmp.prepare_refiner(
                model,
                fit_dataset=None if params else open_data_split(cfg.data, cfg.fit_split),
                fit_images=cfg.fit_images,
                params_file=params,
            )
            name = f"{cmp.MODEL}+refine"
            refined = by_tiles(RefinedSegmenter(seg, refiner, name=name), size)  # refined tile by tile
            specs.append(cmp.MethodSpec(name, refined, kind="model", score_threshold=cfg.score_threshold))
            methods.insert(methods.index(cmp.MODEL) + 1, name)
        elif cfg.get("refine") not in (None, "none"):
            raise SegbenchError(f"refine={cfg.refine!r} is not valid; choose edges or null")
    if baseline_names:
        params_dir = cfg.get("baseline_params_dir")
        options = OmegaConf.to_container(cfg.get("baselines") or {}, resolve=True)
        baselines = cmp.prepare_baselines(
            baseline_names,
            options,
            fit_dataset=None if params_dir else open_data_split(cfg.data, cfg.fit_split),
            fit_images=cfg.fit_images,
            params_dir=params_dir,
        )
        specs += [cmp.MethodSpec(name, by_tiles(seg), kind="baseline") for name, seg in baselines.items()]
    specs.sort(key=lambda s: methods.index(s.name))

    comparison = cmp.compare_methods(
        specs,
        dataset,
        split=cfg.split,
        max_dets=cfg.max_dets,
        limit=cfg.limit,
        bootstrap=cfg.bootstrap,
        bootstrap_seed=cfg.bootstrap_seed,
        overlays=cfg.overlays,
        label_errors=bool(cfg.get("label_errors", False)),
    )
    if tile is not None:
        comparison.notes.append(
            "every method ran by tiles: "
            + "; ".join(
                f"{s.name}: {s.segmenter.describe()}" for s in specs if hasattr(s.segmenter, "describe")
            )
        )
    paths = write_report(comparison, cfg.out, dataset=dataset, config_yaml=OmegaConf.to_yaml(cfg))

    print(f"{comparison.dataset} ({comparison.split}, {comparison.num_images} images)")
    print(format_leaderboard(comparison.leaderboard))
    for w in comparison.warnings:
        print(f"warning: {w}")
    if comparison.bootstrap:
        print(format_bootstrap(comparison.bootstrap))
    for n in comparison.notes:
        print(n)
    if comparison.analysis:
        print(format_analysis({"analysis": comparison.analysis}))
    if comparison.label_errors:
        counts = ", ".join(f"{k} {v}" for k, v in comparison.label_errors["counts"].items())
        print(f"suspected label errors: {counts} (label_errors.json, label_errors_patch.json)")
    print(f"report: {Path(paths['html'])}")
    return 0
