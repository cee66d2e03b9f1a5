"""Dataset statistics: images, instances per class, instances per image, object sizes."""

from __future__ import annotations

from collections import Counter

import numpy as np
from pycocotools import mask as mask_utils

from segbench.data.annotations import decode_annotation
from segbench.data.coco import CocoDataset

#: COCO's size classes (pixel areas)
SMALL, MEDIUM = 32**2, 96**2


def dataset_stats(ds: CocoDataset) -> dict:
    """Statistics of one split, from its annotations (masks are run-length encoded, never made dense).

    Returns
    -------
    dict
        ``images``, ``negatives`` (images without objects), ``instances``, ``crowd``,
        ``per_class`` {name: count}, ``per_image`` {min, median, max, mean}, ``sizes``
        {small, medium, large} (COCO: area < 32², < 96², larger), ``image_sizes`` {min, max} as HxW,
        ``dropped`` {problem kind: count} (the loader's, see :mod:`segbench.data.annotations`),
        ``not_classes`` {category name: why} (categories of the JSON that are not trained as classes:
        no annotation uses them, or they only name the dataset).
    """
    per_class: Counter = Counter()
    counts, sizes = [], Counter()
    crowd = 0
    hw = []
    for i in range(len(ds)):
        h, w = ds.image_size(i)
        hw.append((h, w))
        n = 0
        for ann in ds.annotations(i):
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            n += 1
            per_class[ds.class_names[ds.cat_id_to_label[ann["category_id"]] - 1]] += 1
            area = float(mask_utils.area(decode_annotation(ann, h, w)))
            sizes["small" if area < SMALL else "medium" if area < MEDIUM else "large"] += 1
        counts.append(n)
    c = np.asarray(counts) if counts else np.zeros(1)
    areas = np.asarray([h * w for h, w in hw]) if hw else np.zeros(1)
    return {
        "images": len(ds),
        "negatives": int(sum(1 for n in counts if n == 0)),
        "instances": int(sum(counts)),
        "crowd": crowd,
        "per_class": {name: int(per_class.get(name, 0)) for name in ds.class_names},
        "per_image": {
            "min": int(c.min()),
            "median": float(np.median(c)),
            "max": int(c.max()),
            "mean": float(c.mean()),
        },
        "sizes": {k: int(sizes.get(k, 0)) for k in ("small", "medium", "large")},
        "image_sizes": {
            "min": "x".join(map(str, hw[int(np.argmin(areas))])) if hw else None,
            "max": "x".join(map(str, hw[int(np.argmax(areas))])) if hw else None,
        },
        "dropped": {k: len(v) for k, v in ds.dropped.by_reason.items()},
        "not_classes": {
            c["name"]: "no annotation" if c in ds.empty_categories else "names the dataset"
            for c in ds.all_categories
            if c["id"] not in ds.cat_id_to_label
        },
    }


def format_stats(split: str, s: dict) -> str:
    """A human-readable block for one split."""
    lines = [
        f"[{split}] {s['images']} images ({s['negatives']} without objects), {s['instances']} instances"
        + (f", {s['crowd']} crowd regions" if s["crowd"] else ""),
        f"  image sizes (HxW): {s['image_sizes']['min']} .. {s['image_sizes']['max']}",
        "  instances per class: " + ", ".join(f"{k}={v}" for k, v in s["per_class"].items()),
        "  instances per image: min {min}, median {median:g}, max {max}, mean {mean:.1f}".format(
            **s["per_image"]
        ),
        "  object sizes: small {small}, medium {medium}, large {large} (COCO: <32², <96², larger)".format(
            **s["sizes"]
        ),
    ]
    if s["dropped"]:
        lines.append("  dropped annotations: " + ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()))
    if s.get("not_classes"):
        lines.append(
            "  categories that are not classes: "
            + ", ".join(f"{k} ({v})" for k, v in s["not_classes"].items())
            + " (data.keep_empty_classes=true trains the empty ones)"
        )
    return "\n".join(lines)
