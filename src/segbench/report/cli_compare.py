"""``segbench compare``: the command function (config in, library calls, a few printed lines out)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segbench.types import SegbenchError

log = logging.getLogger(__name__)


def _load_model(ckpt_path: str, dataset, device: str):
    """The checkpoint's Mask R-CNN as a segmenter, refused when its classes differ from the dataset's."""
    import torch

    from segbench.models.segmenter import MaskRCNNSegmenter

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    seg, meta = MaskRCNNSegmenter.from_checkpoint(ckpt_path, device=device)
    if list(meta["class_names"]) != list(dataset.class_names):
        raise SegbenchError(
            f"{ckpt_path} was trained on classes {meta['class_names']} but {dataset.ann_file} has "
            f"{dataset.class_names}; compare on a dataset with the same categories"
        )
    return seg


def compare(cfg: DictConfig) -> int:
    """Score the model and the classical baselines on one split; write the leaderboard, figures and report.

    Baselines are fitted on ``fit_split`` (at most ``fit_images`` images) — or loaded from
    ``baseline_params_dir`` (e.g. the ``baselines/`` folder of an earlier run) — and scored with the model
    by the same evaluator. Segm AP is class-agnostic for every method; the model's F1 / PQ / foreground IoU
    count its detections with ``score >= score_threshold``, the baselines' count all their detections.

    Keys: data.root, methods (null: maskrcnn when ckpt_path is given, and every baseline), ckpt_path,
    split, fit_split, fit_images, baseline_params_dir, baselines.<name>.<option>, out, max_dets,
    score_threshold, bootstrap (resamples; 0 skips), bootstrap_seed, overlays, limit, device.
    """
    from segbench.commands import open_data_split
    from segbench.eval import compare as cmp
    from segbench.report import write_report

    ckpt_path = cfg.get("ckpt_path")
    methods = cmp.check_methods(cfg.get("methods"), has_model=bool(ckpt_path))
    if ckpt_path and cmp.MODEL not in methods:
        log.warning("ckpt_path is set but methods does not include '%s': the model is not scored", cmp.MODEL)
    baseline_names = [m for m in methods if m != cmp.MODEL]
    if baseline_names and not cfg.get("baseline_params_dir") and cfg.fit_split == cfg.split:
        log.warning(
            "fit_split and split are both '%s': the baselines are fitted on the images they are scored on, "
            "which flatters them; fit on the training split instead",
            cfg.split,
        )

    dataset = open_data_split(cfg.data, cfg.split)
    if len(dataset) == 0:
        raise SegbenchError(f"split '{cfg.split}' ({dataset.ann_file}) has no images to score")
    specs = []
    if cmp.MODEL in methods:
        seg = _load_model(ckpt_path, dataset, str(cfg.get("device", "auto")))
        specs.append(cmp.MethodSpec(cmp.MODEL, seg, kind="model", score_threshold=cfg.score_threshold))
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
        specs += [cmp.MethodSpec(name, seg, kind="baseline") for name, seg in baselines.items()]
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
    )
    paths = write_report(comparison, cfg.out, dataset=dataset, config_yaml=OmegaConf.to_yaml(cfg))

    print(f"{comparison.dataset} ({comparison.split}, {comparison.num_images} images)")
    print(cmp.format_leaderboard(comparison.leaderboard))
    for w in comparison.warnings:
        print(f"warning: {w}")
    if comparison.bootstrap:
        print(cmp.format_bootstrap(comparison.bootstrap))
    for n in comparison.notes:
        print(n)
    print(f"report: {Path(paths['html'])}")
    return 0
