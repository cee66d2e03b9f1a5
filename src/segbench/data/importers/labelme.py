"""LabelMe JSON (one file per image) -> segbench COCO.

Read: every ``*.json`` under ``in=`` (a folder, searched recursively, or one file; ``train/`` and ``val/``
subfolders are splits) that has a ``shapes`` list. Shapes: ``polygon`` (also a missing ``shape_type``),
``rectangle`` (two corners), ``circle`` (centre and a point on the circle: a polygon within 0.1 px) and
``mask`` (a base64 PNG of the box ``points[0]..points[1]``, as labelme >= 5.3 writes it). ``point``,
``line``, ``linestrip`` and ``points`` have no area and are skipped. Shapes with the same ``label`` and
``group_id`` are one object with several parts (labelme's own rule in ``shapes_to_label``): polygons stay
polygon parts, a group with a mask becomes one RLE. The image is ``imagePath`` (relative to the JSON,
backslashes allowed; looked for in ``images=`` too); when that file is missing, the embedded ``imageData``
is written out instead. ``imageHeight`` / ``imageWidth`` must match the image, else the image is skipped.

The ``labelme`` package itself is not used: it pulls in a Qt GUI stack (PyQt5, onnxruntime for its AI
tools) for what is a plain JSON format, read here with the standard library.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from segbench.data.importers._common import (
    DatasetWriter,
    ImportOptions,
    ellipse_polygon,
    flat_points,
    rect_polygon,
    safe_name,
    split_folders,
)
from segbench.io import read_json
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

NO_AREA = ("point", "points", "line", "linestrip")


def find_files(src: Path, writer: DatasetWriter) -> list[tuple[str | None, Path, Path]]:
    """``(split or None, JSON file, the folder images are named relative to for out/)``."""
    if src.is_file():
        return [(None, src, src.parent)]
    if not src.is_dir():
        raise SegbenchError(f"in={src}: no such file or folder")
    splits = split_folders(src)
    roots = list(splits.items()) if splits else [(None, src)]
    found = [(s, p, d) for s, d in roots for p in sorted(d.rglob("*.json")) if not writer.excluded(p)]
    if not found:
        raise SegbenchError(
            f"no LabelMe JSON under {src}: expected one <image>.json per image (labelme's Save)"
        )
    return found


def read(src: Path, writer: DatasetWriter, opts: ImportOptions) -> None:
    """Read LabelMe files into ``writer`` (see the module docstring)."""
    for split, jf, root in find_files(src, writer):
        shown = writer.show(jf)
        try:
            doc = read_json(jf, what="LabelMe file", hint="save it again in labelme")
        except SegbenchError as e:
            writer.log.skip(shown, None, "unreadable_file", str(e))
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
            writer.log.skip(shown, None, "unreadable_file", "not a LabelMe file: no 'shapes' list")
            continue
        image = _image(doc, jf, root, split, writer, opts)
        if image is not None:
            _shapes(doc["shapes"], image, shown, writer)


def _image(doc: dict, jf: Path, root: Path, split: str | None, writer: DatasetWriter, opts: ImportOptions):
    shown = writer.show(jf)
    ip = doc.get("imagePath")
    rel = safe_name(ip) if isinstance(ip, str) and ip.strip() else None
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    declared = (
        (int(h), int(w)) if all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w)) else None
    )
    candidates = []
    if isinstance(ip, str) and ip.strip():
        raw = ip.replace("\\", "/")
        candidates += [jf.parent / raw, jf.parent / Path(raw).name]
        if opts.images is not None:
            candidates += [Path(opts.images) / raw, Path(opts.images) / Path(raw).name]
    path = next((c for c in candidates if c.is_file()), None)
    if path is not None:
        try:
            name = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            name = path.name
        return writer.add_image(split, name, path=path, declared_hw=declared, file=shown)
    data = doc.get("imageData")
    if isinstance(data, str) and data:
        try:
            raw_bytes = base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError) as e:
            writer.log.skip(shown, None, "unreadable_image", f"imageData is not base64 ({e})")
            return None
        name = rel or f"{jf.stem}.png"
        writer.log.note(shown, None, "ignored", f"image file {ip!r} not found: wrote the embedded imageData")
        return writer.add_image(split, name, data=raw_bytes, declared_hw=declared, file=shown)
    writer.log.skip(
        shown,
        None,
        "missing_image",
        f"imagePath {ip!r} not found beside the JSON"
        + (" or in images=" if opts.images else "")
        + " and no imageData",
    )
    return None


def _shapes(shapes: list, image, shown: str, writer: DatasetWriter) -> None:
    groups: dict[Any, dict] = {}
    for k, s in enumerate(shapes):
        obj = f"shape {k}"
        if not isinstance(s, dict):
            writer.log.skip(shown, obj, "malformed", f"a shape must be an object, got {type(s).__name__}")
            continue
        label, kind = s.get("label"), s.get("shape_type") or "polygon"
        if isinstance(label, str):
            obj += f" ({label!r})"
        if kind in NO_AREA:
            writer.log.skip(shown, obj, "no_area", f"a {kind!r} shape has no area")
            continue
        try:
            piece = _piece(s, kind, image)
        except ValueError as e:
            writer.log.skip(shown, obj, "malformed", f"{kind}: {e}")
            continue
        if piece is None:
            writer.log.skip(shown, obj, "unsupported_shape", f"shape_type {kind!r} is not supported")
            continue
        gid = s.get("group_id")
        key = (str(label), gid) if gid is not None and isinstance(gid, int | str) else ("", k, None)
        g = groups.setdefault(key, {"label": label, "polygons": [], "masks": [], "shapes": []})
        (g["masks"] if isinstance(piece, np.ndarray) else g["polygons"]).append(piece)
        g["shapes"].append(k)
    for (_, gid, *_rest), g in groups.items():
        idx = g["shapes"]
        obj = (
            f"shape {idx[0]}" if len(idx) == 1 else "shapes " + "+".join(map(str, idx)) + f" (group_id {gid})"
        )
        if isinstance(g["label"], str):
            obj += f" ({g['label']!r})"
        writer.add_object(image, g["label"], polygons=g["polygons"], masks=g["masks"], file=shown, obj=obj)


def _piece(s: dict, kind: str, image) -> list[float] | np.ndarray | None:
    """One shape as a polygon (pixel coordinates) or a full-image bool mask; None if unsupported."""
    pts = flat_points(s.get("points"))
    if kind == "polygon":
        return pts
    if kind == "rectangle":
        if len(pts) != 4:
            raise ValueError(f"a rectangle has 2 points, got {len(pts) // 2}")
        return rect_polygon(*pts)
    if kind == "circle":
        if len(pts) != 4:
            raise ValueError(f"a circle has 2 points (centre, rim), got {len(pts) // 2}")
        r = float(np.hypot(pts[2] - pts[0], pts[3] - pts[1]))
        return ellipse_polygon(pts[0], pts[1], r, r)
    if kind == "mask":
        return _mask_piece(s, pts, image)
    return None


def _mask_piece(s: dict, pts: list[float], image) -> np.ndarray:
    if len(pts) != 4:
        raise ValueError(f"a mask shape has 2 points (its box), got {len(pts) // 2}")
    data = s.get("mask")
    if not isinstance(data, str) or not data:
        raise ValueError("no 'mask' (base64 PNG)")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            arr = np.asarray(im if im.mode in ("1", "L", "P", "I", "I;16") else im.convert("L")) > 0
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"'mask' is not a base64 image ({e})") from None
    x1, y1, x2, y2 = (int(v) for v in pts)  # labelme: mask[y1:y2+1, x1:x2+1] = shape["mask"]
    if arr.ndim != 2 or arr.shape not in ((y2 - y1 + 1, x2 - x1 + 1), (y2 - y1, x2 - x1)):
        raise ValueError(f"the mask is {arr.shape[::-1]} (WxH) but its box is {x2 - x1 + 1}x{y2 - y1 + 1}")
    full = np.zeros((image.height, image.width), dtype=bool)
    ys, xs = (
        slice(max(y1, 0), min(y1 + arr.shape[0], image.height)),
        slice(max(x1, 0), min(x1 + arr.shape[1], image.width)),
    )
    if ys.start < ys.stop and xs.start < xs.stop:
        full[ys, xs] = arr[ys.start - y1 : ys.stop - y1, xs.start - x1 : xs.stop - x1]
    return full
