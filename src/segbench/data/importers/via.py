"""VIA (VGG Image Annotator) JSON -> segbench COCO.

Read: the annotation export of VIA 1 and 2 (``via_region_data.json`` of the Matterport balloon tutorial:
a dict keyed by ``filename + size``, each entry with ``filename`` and ``regions``, a list in VIA 2 and a
dict ``{"0": ...}`` in VIA 1), VIA 2 project files (the same entries under ``_via_img_metadata``) and VIA 3
project files (``file`` / ``view`` / ``metadata``). Region shapes: ``polygon``, ``rect``, ``circle``,
``ellipse`` (VIA 3: the same shapes by number). ``point`` and ``polyline`` (open lines) have no area and are
skipped. The class is the region attribute ``class_key`` (default: the first attribute whose value is a
text), VIA has no multi-part objects. Images are looked for in ``images=``, beside the JSON, then in the
project's default path. ``in=`` is the JSON, or a folder holding it, or a folder with ``train/`` and
``val/`` subfolders each holding their JSON (the balloon layout).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segbench.data.importers._common import (
    DatasetWriter,
    ImportOptions,
    ellipse_polygon,
    flat_points,
    rect_polygon,
    split_folders,
)
from segbench.io import read_json
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

#: VIA 3's region shape codes (``_VIA_RSHAPE``)
VIA3_SHAPES = {1: "point", 2: "rect", 3: "circle", 4: "ellipse", 5: "line", 6: "polyline", 7: "polygon"}
VIA3_SHAPES |= {8: "extreme_rectangle", 9: "extreme_circle"}


def find_files(src: Path, writer: DatasetWriter) -> list[tuple[str | None, Path]]:
    """``(split or None, JSON file)`` pairs of a VIA ``in=``."""
    if src.is_file():
        return [(None, src)]
    if not src.is_dir():
        raise SegbenchError(f"in={src}: no such file or folder")
    splits = split_folders(src)
    if splits:
        found = [(s, p) for s, d in splits.items() for p in sorted(d.glob("*.json"))]
    else:
        found = [(None, p) for p in sorted(src.glob("*.json"))]
    found = [(s, p) for s, p in found if not writer.excluded(p)]
    if not found:
        raise SegbenchError(
            f"no VIA JSON in {src}: expected via_region_data.json (or a VIA project .json) there, or "
            "train/ and val/ folders each holding one; pass in=FILE to name it"
        )
    return found


def read(src: Path, writer: DatasetWriter, opts: ImportOptions) -> None:
    """Read a VIA export into ``writer`` (see the module docstring)."""
    for split, jf in find_files(src, writer):
        shown = writer.show(jf)
        try:
            doc = read_json(
                jf, what="VIA annotation file", hint="re-export it from VIA (Annotation > Export)"
            )
        except SegbenchError as e:
            writer.log.skip(shown, None, "unreadable_file", str(e))
            continue
        if isinstance(doc, dict) and {"file", "metadata", "view"} <= doc.keys():
            _read_via3(doc, jf, split, writer, opts)
            continue
        entries, default_dir = _via2_entries(doc)
        if entries is None:
            writer.log.skip(
                shown,
                None,
                "unreadable_file",
                "not a VIA export: expected a JSON object of entries with 'filename' and 'regions' "
                "(or a VIA project with '_via_img_metadata')",
            )
            continue
        dirs = [d for d in (opts.images, jf.parent, default_dir and (jf.parent / default_dir)) if d]
        for key, entry in entries.items():
            _read_entry(key, entry, jf, split, dirs, writer, opts)


def _via2_entries(doc: Any) -> tuple[dict | None, str | None]:
    if not isinstance(doc, dict):
        return None, None
    if "_via_img_metadata" in doc:
        meta = doc["_via_img_metadata"]
        settings = doc.get("_via_settings") if isinstance(doc.get("_via_settings"), dict) else {}
        core = settings.get("core") if isinstance(settings.get("core"), dict) else {}
        default = core.get("default_filepath")
        default = default if isinstance(default, str) and default and "://" not in default else None
        return (meta if isinstance(meta, dict) else None), default
    if doc and all(isinstance(v, dict) and "filename" in v for v in doc.values()):
        return doc, None
    if not doc:
        return {}, None
    return None, None


def _image_path(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        p = Path(d) / name.replace("\\", "/")
        if p.is_file():
            return p
    return None


def _read_entry(
    key: str,
    entry: Any,
    jf: Path,
    split: str | None,
    dirs: list[Path],
    writer: DatasetWriter,
    opts: ImportOptions,
) -> None:
    shown = writer.show(jf)
    where = f"entry {key!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
        writer.log.skip(shown, where, "malformed", "an entry needs a 'filename' (text)")
        return
    name = entry["filename"]
    regions = entry.get("regions", [])
    if isinstance(regions, dict):  # VIA 1: {"0": {...}, "1": {...}}
        keys = sorted(
            regions, key=lambda k: (not str(k).isdigit(), int(k) if str(k).isdigit() else 0, str(k))
        )
        regions = [regions[k] for k in keys]
    if not isinstance(regions, list):
        writer.log.skip(shown, where, "malformed", f"'regions' must be a list, got {type(regions).__name__}")
        return
    if "://" in name:
        writer.log.skip(
            shown, where, "missing_image", f"{name!r} is a web address; download it beside the JSON"
        )
        return
    path = _image_path(name, dirs)
    if path is None:
        writer.log.skip(
            shown,
            where,
            "missing_image",
            f"image {name!r} not found in {', '.join(writer.show(d) or '.' for d in dirs)}",
        )
        return
    image = writer.add_image(split, name, path=path, file=shown, obj=where)
    if image is None:
        return
    for k, region in enumerate(regions):
        obj = f"{where} region {k}"
        if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
            writer.log.skip(shown, obj, "malformed", "a region needs 'shape_attributes'")
            continue
        label = class_of(region.get("region_attributes"), opts.class_key)
        try:
            poly = region_polygon(region["shape_attributes"])
        except ValueError as e:
            writer.log.skip(shown, obj, "malformed", str(e))
            continue
        except _NoArea as e:
            writer.log.skip(shown, obj, e.code, str(e))
            continue
        writer.add_object(image, label, polygons=[poly], file=shown, obj=obj)


class _NoArea(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _num(sa: dict, key: str) -> float:
    v = sa.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ValueError(f"{sa.get('name')} needs a number '{key}', got {v!r}")
    return float(v)


def region_polygon(sa: dict) -> list[float]:
    """A VIA 1/2 ``shape_attributes`` as a polygon ``[x1, y1, ...]`` in pixels.

    Raises ``ValueError`` for missing or wrong fields, and an internal ``_NoArea`` for points, lines and
    shapes VIA knows but that have no area.

    >>> region_polygon({"name": "rect", "x": 1, "y": 2, "width": 3, "height": 4})
    [1.0, 2.0, 4.0, 2.0, 4.0, 6.0, 1.0, 6.0]
    >>> region_polygon({"name": "polygon", "all_points_x": [0, 4, 4], "all_points_y": [0, 0, 4]})
    [0.0, 0.0, 4.0, 0.0, 4.0, 4.0]
    """
    name = sa.get("name")
    if name == "polygon":
        xs, ys = sa.get("all_points_x"), sa.get("all_points_y")
        if not isinstance(xs, list) or not isinstance(ys, list):
            raise ValueError("polygon needs lists 'all_points_x' and 'all_points_y'")
        if len(xs) != len(ys):
            raise ValueError(f"polygon has {len(xs)} x but {len(ys)} y coordinates")
        return flat_points([[x, y] for x, y in zip(xs, ys, strict=True)])
    if name == "rect":
        x, y = _num(sa, "x"), _num(sa, "y")
        return rect_polygon(x, y, x + _num(sa, "width"), y + _num(sa, "height"))
    if name == "circle":
        r = _num(sa, "r")
        return ellipse_polygon(_num(sa, "cx"), _num(sa, "cy"), r, r)
    if name == "ellipse":
        theta = float(sa["theta"]) if isinstance(sa.get("theta"), int | float) else 0.0
        return ellipse_polygon(_num(sa, "cx"), _num(sa, "cy"), _num(sa, "rx"), _num(sa, "ry"), theta)
    if name in ("point", "polyline", "line"):
        raise _NoArea("no_area", f"a VIA {name!r} has no area")
    raise _NoArea("unsupported_shape", f"VIA shape {name!r} is not supported")


def class_of(attrs: Any, key: str | None) -> str | None:
    """The class of a region from its ``region_attributes``: the value of ``key``, else the first text value.

    A checkbox attribute (``{"option": true}``) gives its one checked option.

    >>> class_of({"name": "", "type": "balloon"}, None), class_of({"a": {"cat": True}}, "a")
    ('balloon', 'cat')
    """
    if not isinstance(attrs, dict):
        return None

    def value(v: Any) -> str | None:
        if isinstance(v, str) and v.strip():
            return v.strip()
        if isinstance(v, dict):
            on = [str(k) for k, c in v.items() if c is True]
            return on[0] if len(on) == 1 else None
        return None

    if key is not None:
        return value(attrs.get(key))
    for v in attrs.values():
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


# --------------------------------------------------------------------------------------------------
# VIA 3 projects
# --------------------------------------------------------------------------------------------------
def _read_via3(doc: dict, jf: Path, split: str | None, writer: DatasetWriter, opts: ImportOptions) -> None:
    shown = writer.show(jf)
    files, views, meta = doc.get("file"), doc.get("view"), doc.get("metadata")
    attrs = doc.get("attribute") if isinstance(doc.get("attribute"), dict) else {}
    if not all(isinstance(x, dict) for x in (files, views, meta)):
        writer.log.skip(
            shown, None, "unreadable_file", "a VIA 3 project needs 'file', 'view' and 'metadata' objects"
        )
        return
    by_view: dict[str, list[tuple[str, dict]]] = {}
    for mid, m in meta.items():
        if isinstance(m, dict):
            by_view.setdefault(str(m.get("vid")), []).append((str(mid), m))
    dirs = [d for d in (opts.images, jf.parent) if d]
    for vid, view in views.items():
        fids = view.get("fid_list") if isinstance(view, dict) else None
        if not isinstance(fids, list) or len(fids) != 1:
            writer.log.skip(shown, f"view {vid}", "malformed", "a view of one image needs 'fid_list': [fid]")
            continue
        f = files.get(str(fids[0]))
        if not isinstance(f, dict) or not isinstance(f.get("fname"), str):
            writer.log.skip(shown, f"view {vid}", "malformed", f"file {fids[0]!r} is not in 'file'")
            continue
        name = f["fname"]
        src_name = f.get("src") if isinstance(f.get("src"), str) and f.get("src") else name
        path = _image_path(name, dirs) or _image_path(src_name, dirs)
        where = f"file {fids[0]} ({name})"
        if path is None:
            writer.log.skip(shown, where, "missing_image", f"image {name!r} not found beside the project")
            continue
        image = writer.add_image(split, name, path=path, file=shown, obj=where)
        if image is None:
            continue
        for mid, m in by_view.get(str(vid), []):
            obj = f"metadata {mid!r}"
            if m.get("z"):
                writer.log.skip(
                    shown, obj, "unsupported_shape", "a temporal (video) segment, not an image region"
                )
                continue
            xy = m.get("xy")
            if not isinstance(xy, list) or not xy:
                writer.log.skip(shown, obj, "malformed", "a region needs 'xy': [shape, coordinates...]")
                continue
            label = _via3_class(m.get("av"), attrs, opts.class_key)
            try:
                poly = _via3_polygon(xy)
            except ValueError as e:
                writer.log.skip(shown, obj, "malformed", str(e))
                continue
            except _NoArea as e:
                writer.log.skip(shown, obj, e.code, str(e))
                continue
            writer.add_object(image, label, polygons=[poly], file=shown, obj=obj)


def _via3_polygon(xy: list) -> list[float]:
    shape = VIA3_SHAPES.get(xy[0]) if isinstance(xy[0], int) else None
    vals = xy[1:]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"coordinates must be numbers, got {vals[:6]!r}")
    vals = [float(v) for v in vals]
    if shape == "polygon":
        return flat_points(vals)
    if shape == "rect" and len(vals) == 4:
        return rect_polygon(vals[0], vals[1], vals[0] + vals[2], vals[1] + vals[3])
    if shape == "circle" and len(vals) == 3:
        return ellipse_polygon(vals[0], vals[1], vals[2], vals[2])
    if shape == "ellipse" and len(vals) == 4:
        return ellipse_polygon(*vals)
    if shape in ("point", "line", "polyline"):
        raise _NoArea("no_area", f"a VIA {shape!r} has no area")
    if shape is None:
        raise _NoArea("unsupported_shape", f"unknown VIA 3 shape code {xy[0]!r}")
    raise ValueError(f"VIA 3 {shape} with {len(vals)} coordinate(s)")


def _via3_class(av: Any, attrs: dict, key: str | None) -> str | None:
    if not isinstance(av, dict):
        return None
    for aid, value in av.items():
        a = attrs.get(str(aid)) if isinstance(attrs.get(str(aid)), dict) else {}
        if key is not None and a.get("aname") != key and str(aid) != key:
            continue
        options = a.get("options") if isinstance(a.get("options"), dict) else {}
        if isinstance(value, str) and value.strip():
            return str(options.get(value, value)).strip()
    return None
