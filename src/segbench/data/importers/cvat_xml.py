"""CVAT's "CVAT for images 1.1" XML -> segbench COCO.

Read: ``annotations.xml`` (``in=`` the file, or the export's folder holding it and ``images/``). The class
list is ``<meta>``'s ``<labels><label><name>`` (task, project or job export): it gives the category ids,
and shapes of another label are skipped. Each ``<image name width height>`` holds shapes:
``<polygon points="x1,y1;x2,y2;...">``, ``<box xtl ytl xbr ybr>`` (``rotation`` in degrees honoured),
``<ellipse cx cy rx ry>``, and ``<mask rle left top width height>`` (CVAT's mask RLE: alternating runs of
0s and 1s, starting with 0s, row by row over the ``width`` x ``height`` box at ``left``, ``top``; decoded to
the exact pixels and written as COCO RLE). ``<polyline>`` and ``<points>`` have no area, ``<cuboid>`` and
``<skeleton>`` are not masks: skipped. Shapes sharing a ``group_id`` (not 0) and a label are one object.
An image's ``subset`` (project exports) is its split. ``z_order`` / ``occluded`` are not applied: a
shape's mask is the shape as drawn.

Parsed with the standard library's ``xml.etree.ElementTree`` (CVAT itself reads it with ``defusedxml``; the
expat that ships with Python >= 3.9 refuses the entity-expansion attacks that defusedxml guards against,
and no external entity is ever fetched).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from segbench.data.importers._common import (
    DatasetWriter,
    ImportOptions,
    ellipse_polygon,
    rect_polygon,
    safe_name,
)
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

NO_AREA = ("polyline", "points")
NOT_MASKS = ("cuboid", "skeleton", "track")
SHAPES = ("polygon", "box", "mask", "ellipse", *NO_AREA, *NOT_MASKS)


def find_file(src: Path) -> Path:
    """The XML of ``in=``: the file itself, or ``annotations.xml`` (or the only ``*.xml``) of a folder."""
    if src.is_file():
        return src
    if src.is_dir():
        if (src / "annotations.xml").is_file():
            return src / "annotations.xml"
        xmls = sorted(src.glob("*.xml"))
        if len(xmls) == 1:
            return xmls[0]
        raise SegbenchError(
            f"{'no' if not xmls else len(xmls)} XML file(s) in {src}: expected CVAT's annotations.xml; pass in=FILE"
        )
    raise SegbenchError(f"in={src}: no such file or folder")


def parse(path: Path) -> ET.Element:
    """The root of a CVAT XML file; a :class:`SegbenchError` naming the file, the position and the fix."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise SegbenchError(
            f"{path} is not valid XML ({e}); the file is cut short or not a CVAT export: export the task "
            "again as 'CVAT for images 1.1'"
        ) from None
    except OSError as e:
        raise SegbenchError(f"cannot read {path}: {e}") from None
    if root.tag != "annotations":
        raise SegbenchError(
            f"{path}: the root element is <{root.tag}>, not CVAT's <annotations>; export as 'CVAT for images 1.1'"
        )
    return root


def labels_of(root: ET.Element) -> list[str]:
    """The label names declared in ``<meta>``, in order (duplicates removed)."""
    meta = root.find("meta")
    out: list[str] = []
    if meta is not None:
        for lab in meta.iter("label"):
            name = (lab.findtext("name") or "").strip()
            if name and name not in out:
                out.append(name)
    return out


def read(src: Path, writer: DatasetWriter, opts: ImportOptions) -> None:
    """Read a CVAT for images 1.1 XML into ``writer`` (see the module docstring)."""
    path = find_file(src)
    root = parse(path)
    shown = writer.show(path)
    labels = labels_of(root)
    if labels:
        writer.declare_classes(labels)
    tracks = root.findall("track")
    if tracks:
        writer.log.skip(
            shown,
            f"{len(tracks)} <track>(s)",
            "unsupported_shape",
            "tracks are 'CVAT for video'; export as 'CVAT for images 1.1'",
        )
    images = root.findall("image")
    if not images and not tracks:
        raise SegbenchError(f"{path}: no <image> element; is it a 'CVAT for images 1.1' export?")
    dirs = [d for d in (opts.images, path.parent / "images", path.parent) if d is not None]
    for el in images:
        _image(el, path, dirs, writer)


def _int_attr(el: ET.Element, key: str) -> int | None:
    v = el.get(key)
    try:
        f = float(v) if v is not None else None
    except ValueError:
        return None
    return int(f) if f is not None and f.is_integer() else None


def _image(el: ET.Element, xml: Path, dirs: list[Path], writer: DatasetWriter) -> None:
    shown = writer.show(xml)
    name, iid = el.get("name"), el.get("id")
    where = f"<image id={iid!r} name={name!r}>"
    if not name:
        writer.log.skip(shown, where, "malformed", "an <image> needs a name")
        return
    w, h = _int_attr(el, "width"), _int_attr(el, "height")
    rel = safe_name(name)
    path = next((Path(d) / c for d in dirs for c in (rel, Path(rel).name) if (Path(d) / c).is_file()), None)
    if path is None:
        writer.log.skip(
            shown, where, "missing_image", f"{name!r} not found in {', '.join(writer.show(d) for d in dirs)}"
        )
        return
    subset = el.get("subset")
    split = subset if subset and subset.lower() != "default" else None
    image = writer.add_image(
        split, rel, path=path, declared_hw=(h, w) if h and w else None, file=shown, obj=where
    )
    if image is None:
        return
    groups: dict[tuple, dict] = {}
    for k, s in enumerate(el):
        obj = f"{where} <{s.tag}> {k}"
        if s.tag == "tag":
            writer.log.note(shown, obj, "ignored", f"image tag {s.get('label')!r}: not an object")
            continue
        label = s.get("label")
        if label:
            obj += f" ({label!r})"
        if s.tag in NO_AREA:
            writer.log.skip(shown, obj, "no_area", f"a <{s.tag}> has no area")
            continue
        if s.tag not in SHAPES:
            writer.log.skip(shown, obj, "unsupported_shape", f"<{s.tag}> is not a shape segbench reads")
            continue
        if s.tag in NOT_MASKS:
            writer.log.skip(shown, obj, "unsupported_shape", f"a <{s.tag}> is not an object mask")
            continue
        try:
            piece = _piece(s, image.height, image.width)
        except ValueError as e:
            writer.log.skip(shown, obj, "malformed", str(e))
            continue
        gid = s.get("group_id")
        key = (label, gid) if gid not in (None, "", "0") else (label, None, k)
        g = groups.setdefault(key, {"polygons": [], "masks": [], "objs": []})
        (g["masks"] if isinstance(piece, np.ndarray) else g["polygons"]).append(piece)
        g["objs"].append(obj)
    for key, g in groups.items():
        obj = (
            g["objs"][0]
            if len(g["objs"]) == 1
            else f"group_id {key[1]} ({len(g['objs'])} shapes: {g['objs'][0]} ...)"
        )
        writer.add_object(image, key[0], polygons=g["polygons"], masks=g["masks"], file=shown, obj=obj)


def _floats(s: ET.Element, *keys: str) -> list[float]:
    out = []
    for k in keys:
        v = s.get(k)
        try:
            f = float(v) if v is not None else math.nan
        except ValueError:
            raise ValueError(f"{k}={v!r} is not a number") from None
        if not math.isfinite(f):
            raise ValueError(f"<{s.tag}> needs a number {k}=, got {v!r}")
        out.append(f)
    return out


def points_of(text: str | None) -> list[float]:
    """CVAT's ``points="x1,y1;x2,y2;..."`` as ``[x1, y1, x2, y2, ...]``.

    >>> points_of("1.00,2.00;3.5,4")
    [1.0, 2.0, 3.5, 4.0]
    """
    if not text or not text.strip():
        raise ValueError("no points")
    out: list[float] = []
    for pair in text.strip().split(";"):
        xy = pair.split(",")
        if len(xy) != 2:
            raise ValueError(f"point {pair!r} is not 'x,y'")
        try:
            vals = [float(v) for v in xy]
        except ValueError:
            raise ValueError(f"point {pair!r} is not two numbers") from None
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"point {pair!r} is not two finite numbers")
        out += vals
    return out


def decode_cvat_rle(counts: list[int], width: int, height: int) -> np.ndarray:
    """CVAT's mask RLE -> a ``(height, width)`` bool array: alternating runs of 0s and 1s (0s first),
    row-major over the box.

    >>> decode_cvat_rle([1, 2, 3, 2], 4, 2).astype(int)
    array([[0, 1, 1, 0],
           [0, 0, 1, 1]])
    """
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(height, width)


def _piece(s: ET.Element, h: int, w: int) -> list[float] | np.ndarray:
    if s.tag == "polygon":
        return points_of(s.get("points"))
    rot = float(s.get("rotation") or 0.0) if _is_float(s.get("rotation")) else 0.0
    if s.tag == "box":
        return rect_polygon(*_floats(s, "xtl", "ytl", "xbr", "ybr"), rotation=rot)
    if s.tag == "ellipse":
        cx, cy, rx, ry = _floats(s, "cx", "cy", "rx", "ry")
        return ellipse_polygon(cx, cy, rx, ry, math.radians(rot))
    # mask
    left, top, mw, mh = (_int_attr(s, k) for k in ("left", "top", "width", "height"))
    if None in (left, top, mw, mh) or mw <= 0 or mh <= 0:  # type: ignore[operator]
        raise ValueError("a <mask> needs integer left, top and positive width, height")
    try:
        counts = [int(v) for v in (s.get("rle") or "").replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"rle={str(s.get('rle'))[:40]!r} is not a list of integers") from None
    if not counts or min(counts) < 0 or sum(counts) != mw * mh:  # type: ignore[operator]
        raise ValueError(f"the rle runs sum to {sum(counts)}, not width x height = {mw}x{mh} = {mw * mh}")  # type: ignore[operator]
    box = decode_cvat_rle(counts, mw, mh)  # type: ignore[arg-type]
    full = np.zeros((h, w), dtype=bool)
    y0, x0 = max(top, 0), max(left, 0)  # type: ignore[type-var]
    y1, x1 = min(top + mh, h), min(left + mw, w)  # type: ignore[operator]
    if y0 < y1 and x0 < x1:
        full[y0:y1, x0:x1] = box[y0 - top : y1 - top, x0 - left : x1 - left]  # type: ignore[operator]
    return full


def _is_float(v: str | None) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except ValueError:
        return False
