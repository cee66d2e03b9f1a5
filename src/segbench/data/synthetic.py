"""The embedded default dataset: synthetic shapes written as a COCO dataset.

Each image has a textured background (a two-colour gradient, low-frequency blotches and noise, light or
dark) and 0 to ``max_objects`` objects of a few shape classes. Each class has its own colour family and
texture; objects vary in size and rotation, and some are placed against an earlier one so that they
touch or overlap (the later one occludes: masks are the *visible* parts). A few images hold no object.

It is built to separate methods: a global threshold fails on backgrounds whose polarity and brightness
vary, edges and k-means merge touching objects of one colour, while a Mask R-CNN trained for minutes on
a CPU learns it well. Everything is deterministic for a seed: image ``i`` uses its own generator seeded
with ``(seed, i)``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import disk, polygon

from segbench.types import masks_to_rles

log = logging.getLogger(__name__)

#: class name -> (base RGB colour, texture)
CLASSES: dict[str, tuple[tuple[int, int, int], str]] = {
    "circle": ((215, 60, 50), "speckle"),
    "square": ((60, 170, 75), "stripes"),
    "triangle": ((55, 95, 210), "checker"),
}


@dataclass(frozen=True)
class SynthConfig:
    """Options of the generator (all keyword arguments of :func:`generate`)."""

    num_train: int = 400
    num_val: int = 100
    image_size: int = 192
    max_objects: int = 8
    min_radius: int = 9
    max_radius: int = 34
    empty_fraction: float = 0.04
    touch_fraction: float = 0.35
    seed: int = 0
    #: Probability of each class (in :data:`CLASSES` order) for each object; ``None``: uniform. A variant
    #: with a rare class (e.g. ``(0.49, 0.49, 0.02)``) is what repeat-factor sampling is measured on.
    class_probs: tuple[float, ...] | None = None


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    dark = rng.random() < 0.4
    lo, hi = (15, 110) if dark else (120, 245)
    c0 = rng.uniform(lo, hi, 3)
    c1 = np.clip(c0 + rng.normal(0, 35, 3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    # low-frequency blotches: upsampled coarse noise
    coarse = rng.normal(0, 18, (6, 6, 1)).astype(np.float32)
    blot = np.asarray(
        Image.fromarray(((coarse[..., 0] + 64).clip(0, 128)).astype(np.uint8)).resize((s, s), Image.BICUBIC),
        dtype=np.float32,
    )
    img += (blot - 64)[..., None]
    img += rng.normal(0, rng.uniform(3, 9), (s, s, 1))
    return img


def _texture(kind: str, rng: np.random.Generator, s: int) -> np.ndarray:
    """A (s, s) multiplicative texture around 1."""
    yy, xx = np.mgrid[0:s, 0:s]
    if kind == "stripes":
        period = rng.uniform(5, 9)
        a = rng.uniform(0, np.pi)
        return 1 + 0.18 * np.sign(np.sin((np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period))
    if kind == "checker":
        p = int(rng.integers(4, 7))
        return 1 + 0.15 * (((xx // p) + (yy // p)) % 2 * 2 - 1)
    return 1 + rng.normal(0, 0.12, (s, s))  # speckle


def _shape_mask(name: str, rng: np.random.Generator, s: int, cy: float, cx: float, r: float) -> np.ndarray:
    m = np.zeros((s, s), bool)
    if name == "circle":
        rr, cc = disk((cy, cx), r, shape=(s, s))
    else:
        n = 4 if name == "square" else 3
        rot = rng.uniform(0, 2 * np.pi)
        ang = rot + np.arange(n) * 2 * np.pi / n
        rad = r * (1.25 if n == 3 else 1.15)
        rr, cc = polygon(cy + rad * np.sin(ang), cx + rad * np.cos(ang), shape=(s, s))
    m[rr, cc] = True
    return m


def make_image(index: int, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index`` of the dataset: ``(image (S,S,3) uint8, masks (N,S,S) bool, labels (N,) 1..K)``."""
    rng = np.random.default_rng([cfg.seed, index])
    s = cfg.image_size
    img = _background(rng, s)
    names = list(CLASSES)
    probs = None if cfg.class_probs is None else np.asarray(cfg.class_probs, float) / sum(cfg.class_probs)
    n = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(1, cfg.max_objects + 1))
    full_masks, labels, centers = [], [], []
    for _ in range(n):
        # the uniform draw stays the default's own call, so the default dataset is unchanged
        k = int(rng.integers(len(names)) if probs is None else rng.choice(len(names), p=probs))
        r = float(rng.uniform(cfg.min_radius, cfg.max_radius) * (0.75 if rng.random() < 0.3 else 1.0))
        if centers and rng.random() < cfg.touch_fraction:
            py, px, pr = centers[int(rng.integers(len(centers)))]
            a = rng.uniform(0, 2 * np.pi)
            d = (pr + r) * rng.uniform(0.75, 1.0)  # touching or slightly overlapping
            cy, cx = py + d * np.sin(a), px + d * np.cos(a)
        else:
            cy, cx = rng.uniform(0.05 * s, 0.95 * s, 2)
        m = _shape_mask(names[k], rng, s, cy, cx, r)
        if m.sum() < 30:
            continue
        base, tex = CLASSES[names[k]]
        colour = np.clip(np.asarray(base, np.float32) + rng.normal(0, 22, 3), 0, 255)
        shade = rng.uniform(0.75, 1.2)
        layer = colour[None, None, :] * shade * _texture(tex, rng, s)[..., None]
        img[m] = layer[m]
        full_masks.append(m)
        labels.append(k + 1)
        centers.append((cy, cx, r))
    img = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
    # visible parts: later objects occlude earlier ones
    visible, keep_labels = [], []
    occluder = np.zeros((s, s), bool)
    for m, lbl in zip(reversed(full_masks), reversed(labels), strict=True):
        v = m & ~occluder
        occluder |= m
        if v.sum() >= max(25, 0.3 * m.sum()):
            visible.append(v)
            keep_labels.append(lbl)
    masks = np.asarray(visible[::-1], bool).reshape(-1, s, s)
    return img, masks, np.asarray(keep_labels[::-1], np.int64)


def generate(out: str | os.PathLike, **options) -> dict:
    """Write the synthetic dataset to ``out`` (``images/``, ``annotations/instances_{train,val}.json``).

    Parameters
    ----------
    out : path
        Destination folder (created).
    **options
        Fields of :class:`SynthConfig` (``num_train``, ``num_val``, ``image_size``, ``seed``...).

    Returns
    -------
    dict
        ``{split: {"images": n, "instances": n, "json": path}}`` and ``"seconds"``.
    """
    valid = set(SynthConfig.__dataclass_fields__)
    bad = sorted(set(options) - valid)
    if bad:
        raise ValueError(f"unknown synth option(s) {bad}; valid options: {sorted(valid)}")
    if options.get("class_probs") is not None:
        probs = tuple(float(x) for x in options["class_probs"])
        if len(probs) != len(CLASSES) or min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(
                f"class_probs must be {len(CLASSES)} non-negative numbers (one per class: {list(CLASSES)}) "
                f"with a positive sum, got {list(probs)}"
            )
        options = {**options, "class_probs": probs}
    cfg = SynthConfig(**options)
    if cfg.num_train < 0 or cfg.num_val < 0 or cfg.image_size < 32:
        raise ValueError("num_train and num_val must be >= 0 and image_size >= 32")
    t0 = time.perf_counter()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    summary: dict = {}
    index = 0
    ann_id = 1
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        images, anns = [], []
        for j in range(count):
            img, masks, labels = make_image(index, cfg)
            name = f"{split}_{j:05d}.png"
            Image.fromarray(img).save(out / "images" / name, compress_level=1)
            image_id = j + 1
            images.append(
                {"id": image_id, "file_name": name, "height": cfg.image_size, "width": cfg.image_size}
            )
            for rle, lbl, m in zip(masks_to_rles(masks), labels, masks, strict=True):
                ys, xs = np.nonzero(m)
                x1, y1 = int(xs.min()), int(ys.min())
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": int(lbl),
                        "segmentation": rle,
                        "area": int(m.sum()),
                        "bbox": [x1, y1, int(xs.max()) + 1 - x1, int(ys.max()) + 1 - y1],
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
            index += 1
        path = out / "annotations" / f"instances_{split}.json"
        doc = {
            "info": {"description": "segbench synthetic shapes", "seed": cfg.seed, "version": 1},
            "images": images,
            "annotations": anns,
            "categories": categories,
        }
        path.write_text(json.dumps(doc))
        summary[split] = {"images": len(images), "instances": len(anns), "json": str(path)}
    summary["seconds"] = time.perf_counter() - t0
    log.info("wrote %s in %.1f s", out, summary["seconds"])
    return summary
