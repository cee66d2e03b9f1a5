"""How well the label-error finder finds planted label errors, with a trained model's predictions.

Takes a val split and a model's COCO results on it (e.g. ``<compare out>/methods/maskrcnn/results.json``),
plants errors in a copy of the ground truth — removes a fraction of the objects (the finder should call
them ``missing_label``) and adds as many fake objects, real objects of other images moved to an empty place
(``not_found``) — runs :func:`segbench.eval.analysis.find_label_errors` with the model's calibrated
thresholds, and prints the precision and recall of each kind against the planted errors. A quality
measurement, not a timing: not part of ``run_all.py``.

    .venv/bin/python benchmarks/quality_label_errors.py --root data/synth --results OUT/methods/maskrcnn/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from segbench.data.coco import open_split
from segbench.eval.analysis import calibrate_thresholds, find_label_errors, thresholds_by_name
from segbench.eval.compare import results_method


def _shift(rle: dict, dy: int, dx: int) -> dict:
    m = mask_utils.decode(rle)
    out = np.zeros_like(m)
    h, w = m.shape
    ys, xs = np.nonzero(m)
    ys, xs = ys + dy, xs + dx
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    out[ys[ok], xs[ok]] = 1
    r = mask_utils.encode(np.asfortranarray(out))
    r["counts"] = r["counts"].decode()
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the dataset (data.root)")
    p.add_argument("--split", default="val")
    p.add_argument("--results", required=True, help="the model's COCO results on that split")
    p.add_argument("--fraction", type=float, default=0.1, help="objects removed, and as many added")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    ds = open_split(args.root, args.split)
    results = json.loads(Path(args.results).read_text())
    method = results_method("model", ds, results)
    gt = method.evaluator.gt_dataset()
    thresholds = thresholds_by_name(calibrate_thresholds(gt, method.evaluator.results))

    rng = np.random.default_rng(args.seed)
    anns = [a for a in gt["annotations"] if not a.get("iscrowd")]
    n = max(1, round(args.fraction * len(anns)))
    removed = {anns[i]["id"] for i in rng.choice(len(anns), n, replace=False)}
    kept = [a for a in gt["annotations"] if a["id"] not in removed]
    fakes, next_id = [], max(a["id"] for a in gt["annotations"]) + 1
    by_image: dict = {}
    for a in kept:
        by_image.setdefault(a["image_id"], []).append(a)
    images = gt["images"]
    while len(fakes) < n:
        src = anns[int(rng.integers(len(anns)))]
        im = images[int(rng.integers(len(images)))]
        if im["id"] == src["image_id"]:
            continue
        h, w = im["height"], im["width"]
        moved = _shift(
            src["segmentation"], int(rng.integers(-h // 2, h // 2)), int(rng.integers(-w // 2, w // 2))
        )
        if moved["size"] != [h, w] or mask_utils.area(moved) < 16:
            continue
        others = [x["segmentation"] for x in by_image.get(im["id"], [])]
        if others and max(mask_utils.iou([moved], others, [0] * len(others))[0]) > 0:
            continue  # a fake object lies where nothing is
        fakes.append(
            {**src, "id": next_id, "image_id": im["id"], "segmentation": moved, "source_id": next_id}
        )
        next_id += 1
    planted = {**gt, "annotations": kept + fakes}

    found = find_label_errors(planted, method.evaluator.results, thresholds=thresholds)
    removed_masks = {a["id"]: a for a in anns if a["id"] in removed}
    fake_ids = {a["id"] for a in fakes}

    def hits_removed(e: dict) -> bool:
        gts = [a for a in removed_masks.values() if a["image_id"] == e["image_id"]]
        if not gts:
            return False
        ious = mask_utils.iou([e["segmentation"]], [a["segmentation"] for a in gts], [0] * len(gts))
        return bool(np.max(ious) >= 0.5)

    miss = [e for e in found["errors"] if e["kind"] == "missing_label"]
    nf = [e for e in found["errors"] if e["kind"] == "not_found"]
    tp_miss = sum(hits_removed(e) for e in miss)
    tp_nf = sum(e["ann_id"] in fake_ids for e in nf)
    rec_miss = len({a for a in removed_masks if any(hits_removed(e) for e in miss)})
    print(f"{ds.ann_file}: {len(images)} images, {len(anns)} objects; planted {n} removed + {n} added")
    print(f"model: {args.results}; calibrated thresholds {thresholds}")
    print(f"{'kind':<16}{'flagged':>8}{'right':>7}{'precision':>11}{'recall':>8}")
    for kind, flagged, right in (("missing_label", len(miss), tp_miss), ("not_found", len(nf), tp_nf)):
        prec = right / flagged if flagged else float("nan")
        print(f"{kind:<16}{flagged:>8}{right:>7}{prec:>11.3f}{right / n:>8.3f}")
    print(f"(missing_label recall counted per removed object: {rec_miss}/{n})")
    print(f"class_disagrees flagged: {found['counts']['class_disagrees']}")


if __name__ == "__main__":
    main()
