"""``segbench data synth | stats | check``."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from segbench.commands._common import data_source
from segbench.io import write_json
from segbench.types import SegbenchError


def _splits(cfg: DictConfig) -> dict:
    from segbench.data.coco import resolve_splits

    splits = list(cfg.get("splits") or ["train", "val"])
    return resolve_splits(cfg.data.get("root"), splits, sources={s: data_source(cfg.data, s) for s in splits})


def synth(cfg: DictConfig) -> int:
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


def stats(cfg: DictConfig) -> int:
    """Print per-split statistics: images, instances per class and per image, object sizes.

    Keys: data.root (or data.<split>_ann + data.image_root), splits, out (optional JSON file).
    """
    from segbench.data.coco import CocoDataset
    from segbench.data.stats import dataset_stats, format_stats

    found = {}
    for split, (ann, images) in _splits(cfg).items():
        found[split] = s = dataset_stats(CocoDataset(ann, images))
        print(format_stats(split, s))
    if cfg.get("out"):
        print(f"wrote {write_json(cfg.out, found)}")
    return 0


def check(cfg: DictConfig) -> int:
    """Check a dataset (every split): list every problem by kind with ids and a fix; exit 1 on errors.

    Keys: data.root (or data.<split>_ann + data.image_root), splits, fix (write <stem>.fixed.json and
    <stem>.fixes.log beside each JSON, then check the fixed file), max_dets, read_images, max_examples,
    out (optional JSON file with every issue).
    """
    from segbench.data.doctor import check_split

    found: dict = {}
    errors = warnings = 0
    for split, (ann, images) in _splits(cfg).items():
        result = check_split(ann, images, fix=cfg.fix, max_dets=cfg.max_dets, read_images=cfg.read_images)
        print(result.format(title=split, max_examples=cfg.max_examples))
        print()
        errors += result.errors
        warnings += result.warnings
        found[split] = result.to_dict()
    if cfg.get("out"):
        print(f"wrote {write_json(cfg.out, found)}")
    verdict = "errors remain" if errors else "no errors"
    print(f"data check: {errors} error(s), {warnings} warning(s) in {len(found)} split(s): {verdict}")
    return 1 if errors else 0
