"""The functions behind each ``segbench`` command: composed config in, work done by library code.

Each takes the command's resolved ``DictConfig`` and returns an exit status (``None``/0 for success).
They contain no logic of their own beyond reading the config and printing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segbench.types import SegbenchError

log = logging.getLogger(__name__)


def _splits(cfg: DictConfig) -> list[str]:
    return list(cfg.get("splits") or ["train", "val"])


def open_data_split(data: DictConfig, split: str):
    """Open one split named by a ``data`` config (root layout, or explicit ``<split>_ann`` / ``image_root``)."""
    from segbench.data.coco import open_split

    ann = data.get(f"{split}_ann")
    return open_split(data.get("root"), split, ann_file=ann, image_root=data.get("image_root"))


def _no_split_found(root, splits: list[str]) -> SegbenchError:
    return SegbenchError(
        f"no split of {splits} found under data.root={root}: expected "
        f"{Path(str(root)) / 'annotations' / 'instances_<split>.json'} (e.g. instances_{splits[0]}.json); "
        "name the JSON files that way or pass data.<split>_ann=FILE"
    )


def data_synth(cfg: DictConfig) -> int:
    """Write the embedded synthetic COCO dataset (train and val) to ``out``.

    Keys: out, num_train, num_val, image_size, max_objects, seed.
    """
    from segbench.data.synthetic import generate

    opts = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("out", "paths")}
    try:
        summary = generate(cfg.out, **opts)
    except ValueError as e:
        raise SegbenchError(str(e)) from None
    for split in ("train", "val"):
        s = summary[split]
        print(f"{split}: {s['images']} images, {s['instances']} instances -> {s['json']}")
    print(f"wrote {cfg.out} in {summary['seconds']:.1f} s")
    return 0


def data_stats(cfg: DictConfig) -> int:
    """Print per-split statistics: images, instances per class and per image, object sizes.

    Keys: data.root (or data.<split>_ann + data.image_root), splits, out (optional JSON file).
    """
    from segbench.data.stats import dataset_stats, format_stats
    from segbench.eval.runner import write_json

    found = {}
    for split in _splits(cfg):
        try:
            ds = open_data_split(cfg.data, split)
        except SegbenchError as e:
            if "no annotations for split" in str(e) and len(_splits(cfg)) > 1:
                log.info("skipping split %s: %s", split, e)
                continue
            raise
        found[split] = s = dataset_stats(ds)
        print(format_stats(split, s))
    if not found:
        raise _no_split_found(cfg.data.get("root"), _splits(cfg))
    if cfg.get("out"):
        print(f"wrote {write_json(cfg.out, found)}")
    return 0


def score(cfg: DictConfig) -> int:
    """Score a COCO results JSON (from segbench or any other tool) against a COCO ground-truth JSON.

    Keys: gt, pred, out (folder for metrics.json), iou_types, max_dets (null: keep all detections),
    class_agnostic, score_threshold (for F1/PQ/foreground IoU), backend.
    """
    from segbench.eval.runner import format_metrics_table, score_files, write_json

    m = score_files(
        cfg.gt,
        cfg.pred,
        iou_types=list(cfg.iou_types),
        max_dets=cfg.max_dets,
        class_agnostic=cfg.class_agnostic,
        score_threshold=cfg.score_threshold,
        backend=cfg.backend,
    )
    print(format_metrics_table(m, iou_types=list(cfg.iou_types)))
    out = write_json(Path(cfg.out) / "metrics.json", m)
    print(f"wrote {out}")
    return 0


def data_check(cfg: DictConfig) -> int:
    """Check a dataset (every split): list every problem by kind with ids and a fix; exit 1 on errors.

    Keys: data.root (or data.<split>_ann + data.image_root), splits, fix (write <stem>.fixed.json and
    <stem>.fixes.log beside each JSON, then check the fixed file), max_dets, read_images, max_examples,
    out (optional JSON file with every issue).
    """
    from segbench.data.checks import check_dataset, fix_dataset, fixes_log_path
    from segbench.data.coco import resolve_split
    from segbench.eval.runner import write_json

    splits = _splits(cfg)
    found: dict = {}
    errors = warnings = 0
    for split in splits:
        try:
            ann, images = resolve_split(
                cfg.data.get("root"),
                split,
                ann_file=cfg.data.get(f"{split}_ann"),
                image_root=cfg.data.get("image_root"),
            )
        except SegbenchError as e:
            if "no annotations for split" in str(e) and len(splits) > 1:
                log.info("skipping split %s: %s", split, e)
                continue
            raise
        opts = {"max_dets": cfg.max_dets, "read_images": cfg.read_images}
        report = check_dataset(ann, images, **opts)
        print(report.format(title=split, max_examples=cfg.max_examples))
        entry = {"check": report.to_dict()}
        if cfg.fix and not report.fixable:
            print(f"\n[{split}] fix: nothing to change ({ann} is left as it is)")
        elif cfg.fix:
            out, changes = fix_dataset(ann, report)
            print(f"\n[{split}] fix: {len(changes)} change(s) -> {out} (log: {fixes_log_path(ann, out)})")
            report = check_dataset(out, images, **opts)
            print(report.format(title=f"{split} fixed", max_examples=cfg.max_examples))
            entry.update(fixed=report.to_dict(), changes=changes)
        print()
        errors += report.errors
        warnings += report.warnings
        found[split] = entry
    if not found:
        raise _no_split_found(cfg.data.get("root"), splits)
    if cfg.get("out"):
        print(f"wrote {write_json(cfg.out, found)}")
    verdict = "errors remain" if errors else "no errors"
    print(f"data check: {errors} error(s), {warnings} warning(s) in {len(found)} split(s): {verdict}")
    return 1 if errors else 0
