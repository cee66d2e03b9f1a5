"""``segbench data synth | stats | check``."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from segbench.commands._common import data_source
from segbench.io import write_json
from segbench.types import SegbenchError


def _splits(cfg: DictConfig) -> dict:
    """split -> (JSON, image folder) of the splits asked for (``splits``), found by the layout of
    ``data.root`` (or named by ``data.<split>_ann`` / ``data.image_root``)."""
    from segbench.data.coco import resolve_splits

    splits = list(cfg.get("splits") or ["train", "val"])
    return resolve_splits(cfg.data.get("root"), splits, sources={s: data_source(cfg.data, s) for s in splits})


def synth(cfg: DictConfig) -> int:
    """Write the embedded synthetic COCO dataset (train and val) to ``out``.

    Keys: out, num_train, num_val, image_size, max_objects, seed, class_probs (one probability per class).
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


def stats(cfg: DictConfig) -> int:
    """Print per-split statistics: images, instances per class and per image, object sizes.

    Keys: data.root (or data.<split>_ann + data.image_root), data.keep_empty_classes, splits, out
    (optional JSON file).
    """
    from segbench.data.coco import CocoDataset
    from segbench.data.stats import dataset_stats, format_stats

    found = {}
    keep = bool(cfg.data.get("keep_empty_classes", False))
    for split, (ann, images) in _splits(cfg).items():
        ds = CocoDataset(ann, images, root=cfg.data.get("root"), keep_empty_classes=keep)
        found[split] = s = dataset_stats(ds)
        print(format_stats(split, s))
    if cfg.get("out"):
        print(f"wrote {write_json(cfg.out, found)}")
    return 0


def check(cfg: DictConfig) -> int:
    """Check a dataset (every split): list every problem by kind with ids and a fix; exit 1 on errors.

    Then compare the splits for leakage (the same file, the same pixels or a near-duplicate in train and
    in another split: warnings, printed with the near-duplicate threshold and the seconds it took).

    Keys: data.root (or data.<split>_ann + data.image_root), splits, fix (write <stem>.fixed.json and
    <stem>.fixes.log beside each JSON, then check the fixed file), max_dets, read_images (false: leakage
    by file bytes only), max_examples, out (optional JSON file with every issue; the leakage check under
    "leakage").
    """
    from segbench.data.doctor import NEAR_DUPLICATE_DISTANCE, check_leakage, check_split

    found: dict = {}
    reports: dict = {}
    errors = warnings = 0
    root = cfg.data.get("root")
    for split, (ann, images) in _splits(cfg).items():
        result = check_split(
            ann,
            images,
            root=root,
            fix=cfg.fix,
            max_dets=cfg.max_dets,
            read_images=cfg.read_images,
            fingerprint=True,
        )
        print(result.format(title=split, max_examples=cfg.max_examples))
        print()
        errors += result.errors
        warnings += result.warnings
        found[split] = result.to_dict()
        reports[split] = result.report
    distance = cfg.get("near_duplicate_distance", NEAR_DUPLICATE_DISTANCE)
    try:
        leak = check_leakage(
            reports,
            reference="train",
            max_distance=distance,
            pixels=cfg.read_images,
        )
    except ValueError as e:
        raise SegbenchError(f"near_duplicate_distance: {e}") from None
    print(leak.format(max_examples=cfg.max_examples))
    print()
    warnings += leak.warnings
    if cfg.get("out"):
        print(f"wrote {write_json(cfg.out, {**found, 'leakage': leak.to_dict()})}")
    verdict = "errors remain" if errors else "no errors"
    print(f"data check: {errors} error(s), {warnings} warning(s) in {len(found)} split(s): {verdict}")
    return 1 if errors else 0


def import_(cfg: DictConfig) -> int:
    """Convert a VIA, LabelMe, YOLO-seg, CVAT XML or instance-mask export into a segbench COCO dataset.

    Writes out/images/, out/annotations/instances_<split>.json and out/import_log.txt (+ .json): what was
    converted, and every file or object skipped with the reason and the fix. Exit 2 when nothing usable
    was found.

    Keys: format, in, out, images, classes, default_class, class_key, val_fraction, seed, boxes, link,
    overwrite.
    """
    from segbench.data.importers import IMPORTERS, import_dataset

    missing = [k for k in ("format", "in", "out") if not cfg.get(k)]
    if missing:
        raise SegbenchError(
            "missing required value(s): "
            + ", ".join(missing)
            + f". Usage: segbench data import format={'|'.join(IMPORTERS)} in=PATH out=DIR"
        )
    classes = cfg.get("classes")
    summary = import_dataset(
        str(cfg.format),
        cfg["in"],
        cfg.out,
        classes=list(classes) if classes else None,
        default_class=str(cfg.default_class),
        class_key=cfg.get("class_key"),
        images=cfg.get("images"),
        val_fraction=cfg.val_fraction,
        seed=int(cfg.seed),
        boxes=str(cfg.boxes),
        link=str(cfg.link),
        overwrite=bool(cfg.overwrite),
    )
    print(summary.format_text())
    print(f"imported {summary.objects} objects in {summary.images} images -> {summary.out}")
    return 0


def export(cfg: DictConfig) -> int:
    """Export a dataset (every split) to another format: yolo (Ultralytics YOLO-seg) or masks.

    Writes out/export_log.txt (+ .json) with every object changed (holes filled, parts joined, overlaps)
    or left out.

    Keys: format, data.root (or data.<split>_ann + data.image_root), splits, out, link, overwrite.
    """
    from segbench.data.exporters import EXPORTERS, export_dataset

    if not cfg.get("out") or not cfg.get("format"):
        raise SegbenchError(
            f"missing required value(s): {'out' if not cfg.get('out') else 'format'}. Usage: segbench data export "
            f"format={'|'.join(EXPORTERS)} data.root=DIR out=DIR2"
        )
    if cfg.format not in EXPORTERS:
        raise SegbenchError(f"unknown export format {cfg.format!r}; the formats are {', '.join(EXPORTERS)}")
    summary = export_dataset(
        str(cfg.format), _splits(cfg), cfg.out, link=str(cfg.link), overwrite=bool(cfg.overwrite)
    )
    print(summary.format_text())
    print(f"exported {summary.objects} objects -> {summary.out}")
    return 0
