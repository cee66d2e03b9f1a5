"""Folders of instance-label images -> segbench COCO.

Read: ``in=DIR`` holding an image folder (``images/``, ``imgs/``, ``PNGImages/``...) and a mask folder
(``masks/``, ``labels/``, ``PedMasks/``, ``instances/``), or ``train/`` and ``val/`` folders each holding
such a pair, or one folder per image with ``images/`` and ``masks/`` inside (the Kaggle DSB2018 layout).
For the image ``images/<rel>/<stem>.<ext>`` the mask is ``masks/<rel>/<stem><suffix>.png|.tif|.tiff``
(``suffix`` one of ``""``, ``_mask``, ``_masks``, ``_label``, ``_labels``, ``_instances``: Penn-Fudan's
``FudanPed00001_mask.png``), an instance-label image of the image's size whose pixel value is the instance
id (0 = background; 8- or 16-bit PNG, palette PNG, TIFF of any integer type; an RGB mask's colours are
instances), or a folder ``masks/<rel>/<stem>/`` of binary masks, one per instance. Each id is one object
(its pixels may form several parts, and have holes), written as an exact COCO RLE.

Classes: ``classes.json`` beside ``images/`` (or in ``in=``) maps a pixel value (or an instance mask's file
stem) to a class, ``{"1": "cell", ...}``, or per image ``{"<stem>": {"1": "cell", ...}}``; without it every
object is of one class (``default_class``). An image without a mask file is skipped (``no_mask``), a mask
of another size than its image too (``size_mismatch``); a mask full of zeros is an image without objects.
Masks are read with Pillow, TIFFs with ``tifffile`` (installed with scikit-image).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from segbench.data.coco import IMAGE_EXTENSIONS
from segbench.data.importers._common import DatasetWriter, ImportOptions, split_folders
from segbench.io import read_json
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "imgs", "img", "PNGImages", "JPEGImages")
MASK_DIRS = ("masks", "labels", "PedMasks", "instances")
SUFFIXES = ("", "_mask", "_masks", "_label", "_labels", "_instances")
MASK_EXTENSIONS = (".png", ".tif", ".tiff")


def _pair(d: Path) -> tuple[Path, Path] | None:
    img = next((d / n for n in IMAGE_DIRS if (d / n).is_dir()), None)
    msk = next((d / n for n in MASK_DIRS if (d / n).is_dir()), None)
    return (img, msk) if img is not None and msk is not None else None


def find_layouts(src: Path, opts: ImportOptions) -> list[tuple[str | None, Path, Path, Path]]:
    """``(split or None, image folder, mask folder, folder of classes.json)`` of a masks ``in=``."""
    if not src.is_dir():
        raise SegbenchError(
            f"in={src}: not a folder; the masks format reads a folder with images/ and masks/"
        )
    if opts.images is not None:
        msk = next((src / n for n in MASK_DIRS if (src / n).is_dir()), None)
        if msk is None:
            raise SegbenchError(f"no mask folder ({', '.join(MASK_DIRS)}) in {src}")
        return [(None, Path(opts.images), msk, src)]
    pair = _pair(src)
    if pair is not None:
        return [(None, *pair, src)]
    splits = split_folders(src)
    found = [(s, *p, d) for s, d in splits.items() if (p := _pair(d)) is not None]
    if found:
        return found
    per_image = [
        d for d in sorted(src.iterdir()) if d.is_dir() and (d / "images").is_dir() and (d / "masks").is_dir()
    ]
    if per_image:
        return [(None, d / "images", d / "masks", src) for d in per_image]
    raise SegbenchError(
        f"no images/ + masks/ folders in {src}: expected {src}/images/<name>.png with {src}/masks/<name>.png "
        "(instance ids as pixel values), train/ and val/ folders holding such a pair, or one folder per image "
        "with images/ and masks/ (DSB2018)"
    )


class ClassMap:
    """``classes.json``: value (or instance file stem) -> class, for all images or per image stem."""

    def __init__(self, doc: Any, path: Path) -> None:
        if not isinstance(doc, dict) or not doc:
            raise SegbenchError(f'{path}: classes.json maps a pixel value to a class, e.g. {{"1": "cell"}}')
        self.path = path
        self.nested = all(isinstance(v, dict) for v in doc.values())
        if not self.nested and not all(isinstance(v, str) for v in doc.values()):
            raise SegbenchError(
                f'{path}: every value must be a class name ({{"1": "cell"}}) or, per image, a mapping '
                '({"img1": {"1": "cell"}})'
            )
        self.doc = {
            str(k): ({str(a): str(b) for a, b in v.items()} if self.nested else str(v))
            for k, v in doc.items()
        }
        names: list[str] = []
        for v in self.doc.values():
            for n in v.values() if isinstance(v, dict) else [v]:
                if n not in names:
                    names.append(n)
        self.names = names

    def lookup(self, stem: str, key: str) -> str | None:
        if self.nested:
            m = self.doc.get(stem)
            return m.get(key) if isinstance(m, dict) else None
        v = self.doc.get(key)
        return v if isinstance(v, str) else None


def _class_map(folders: list[Path]) -> ClassMap | None:
    for d in folders:
        p = d / "classes.json"
        if p.is_file():
            return ClassMap(read_json(p, what="class map"), p)
    return None


def read_mask(path: Path) -> np.ndarray:
    """An instance-label mask as an integer ``(H, W)`` array, or a ``(N, H, W)`` stack of binary masks.

    Raises ``ValueError`` when it cannot be read or its values are not non-negative integers."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(
                    im.convert("RGB") if im.mode in ("RGBA", "LA", "PA", "CMYK", "YCbCr") else im
                )
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read the mask ({e})") from None
    except Exception as e:  # noqa: BLE001 - tifffile raises its own error classes for broken files
        raise ValueError(f"cannot read the mask ({type(e).__name__}: {e})") from None
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colours are instances
        rgb = arr[..., :3].astype(np.int64)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            arr = rgb[..., 0]
        else:
            flat = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            _, inv = np.unique(flat, return_inverse=True)
            arr = inv.reshape(flat.shape)
            if flat.min() != 0:  # no black background: keep every colour
                arr = arr + 1
    if arr.ndim not in (2, 3):
        raise ValueError(f"a mask has 2 dimensions (H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
            raise ValueError("mask values must be integer instance ids, got fractions")
        arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"mask values must be >= 0 (0 = background), got {int(arr.min())}")
    return arr


def _find_mask(msk_dir: Path, rel: Path) -> Path | None:
    folder = msk_dir / rel.parent
    for suffix in SUFFIXES:
        for ext in MASK_EXTENSIONS:
            for e in (ext, ext.upper()):
                p = folder / f"{rel.stem}{suffix}{e}"
                if p.is_file():
                    return p
    d = folder / rel.stem
    return d if d.is_dir() else None


def read(src: Path, writer: DatasetWriter, opts: ImportOptions) -> None:
    """Read instance-label masks into ``writer`` (see the module docstring)."""
    layouts = find_layouts(src, opts)
    top = _class_map([src])
    maps = {lay[3]: _class_map([lay[3]]) or top for lay in layouts}
    names = [n for m in maps.values() if m is not None for n in m.names]
    if names:
        writer.declare_classes(dict.fromkeys(names))
    for split, img_dir, msk_dir, folder in layouts:
        classes = maps[folder]
        used: set[Path] = set()
        images = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        for img in images:
            if writer.excluded(img):
                continue
            rel = img.relative_to(img_dir)
            mp = _find_mask(msk_dir, rel)
            if mp is None and len(images) == 1 and img_dir.parent == msk_dir.parent != src:
                mp = msk_dir  # DSB2018: <id>/images/<id>.png with its instance masks in <id>/masks/
            shown_img = writer.show(img)
            if mp is None:
                writer.log.skip(
                    shown_img,
                    None,
                    "no_mask",
                    f"no mask {writer.show(msk_dir / rel.parent / rel.stem)}{{,_mask}}.png|.tif or folder",
                )
                continue
            used.add(mp.resolve())
            _one(split, img, rel, mp, writer, classes)
        for p in sorted(msk_dir.rglob("*")):
            if p.resolve() in used or p.parent.resolve() in used:
                continue
            if p.is_file() and p.suffix.lower() in MASK_EXTENSIONS and p.name != "classes.json":
                writer.log.skip(
                    writer.show(p), None, "orphan_mask", "no image of this name in " + writer.show(img_dir)
                )


def _one(
    split: str | None, img: Path, rel: Path, mp: Path, writer: DatasetWriter, classes: ClassMap | None
) -> None:
    shown = writer.show(mp)
    stem = rel.with_suffix("").as_posix()
    objects: list[tuple[str, np.ndarray]] = []  # (key for classes.json, mask)
    try:
        if mp.is_dir():
            files = sorted(p for p in mp.iterdir() if p.suffix.lower() in MASK_EXTENSIONS)
            for f in files:
                m = read_mask(f)
                if m.ndim != 2:
                    raise ValueError(f"{f.name}: an instance mask is one (H, W) image")
                objects.append((f.stem, m > 0))
            shapes = {m.shape for _, m in objects}
            if len(shapes) > 1:
                raise ValueError(f"the instance masks have different sizes {sorted(shapes)}")
            hw = next(iter(shapes)) if shapes else None
        else:
            arr = read_mask(mp)
            if arr.ndim == 3:  # a stack of binary masks
                objects = [(str(k + 1), arr[k] > 0) for k in range(arr.shape[0])]
                hw = arr.shape[1:]
            else:
                hw = arr.shape
                for v in np.unique(arr):
                    if v != 0:
                        objects.append((str(int(v)), arr == v))
    except ValueError as e:
        writer.log.skip(shown, None, "unreadable_file", f"{e}; its image {writer.show(img)} is skipped")
        return
    image = writer.add_image(
        split, rel.as_posix(), path=img, declared_hw=tuple(hw) if hw else None, file=shown
    )
    if image is None:
        return
    for key, m in objects:
        obj = f"instance {key}"
        label = None
        if classes is not None:
            label = classes.lookup(stem if stem in classes.doc else rel.stem, key)
            if label is None:
                writer.log.skip(
                    shown, obj, "unknown_label", f"value {key} is not in {writer.show(classes.path)}"
                )
                continue
        writer.add_object(image, label, masks=[m], file=shown, obj=obj)
