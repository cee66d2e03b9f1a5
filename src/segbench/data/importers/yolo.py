"""Ultralytics YOLO segmentation labels -> segbench COCO.

Read: ``data.yaml`` (``in=`` the file or its folder): ``names`` (a list, or a dict ``{index: name}``: the
category ids follow the indices), ``path`` (missing, relative or absent on this machine: the YAML's
folder), ``train`` / ``val`` / ``test`` (a folder of images, a ``.txt`` list of images, or a list of
either; Ultralytics' ``../`` fallback of Roboflow exports is applied). Without a YAML, ``in=`` may be a
folder with ``images/<split>/`` and ``labels/<split>/`` (names from ``classes.txt``, else the indices).
Each image's labels are ``labels/.../<stem>.txt`` (the path with its last ``images`` folder replaced by
``labels``, as Ultralytics does), one object per line: ``class x1 y1 x2 y2 ...`` normalised to 0..1.

Rules: a line that comes back to a vertex it has passed is split into its loops (how Ultralytics'
``merge_multi_segment`` joins the parts of one object; :func:`~._common.split_loops`); loops that do not
overlap stay polygon parts, nested loops become an RLE with a hole (even-odd, as ``cv2.fillPoly`` draws
it). A pixel coordinate is the 4-decimal number or the neighbour of ``v * size`` that divides back to the
written ``v`` exactly (undoing the float error of normalising), so that an exported polygon comes back
to the same pixels.
Detection lines ``class cx cy w h`` are skipped as ``box_only`` (``boxes=mask`` imports them as
rectangles). A missing or empty label file is an image without objects, as for Ultralytics.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from segbench.data.coco import IMAGE_EXTENSIONS
from segbench.data.importers._common import (
    DatasetWriter,
    ImportOptions,
    loops_to_shape,
    normalize_split,
    rect_polygon,
    split_loops,
)
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

SPLIT_KEYS = ("train", "val", "test")


def label_path(image: Path) -> Path:
    """Ultralytics' ``img2label_paths``: the last ``images`` folder of the path becomes ``labels``.

    >>> label_path(Path("ds/images/train/a.jpg")).as_posix()
    'ds/labels/train/a.txt'
    >>> label_path(Path("flat/a.png")).as_posix()  # no images/ folder: the label lies beside the image
    'flat/a.txt'
    """
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SegbenchError(f"cannot read {path}: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise SegbenchError(
            f"{path} is not valid YAML ({msg}); an Ultralytics data.yaml has names: [...] and train:/val: paths"
        ) from None


def _names(doc: dict, yaml_file: Path) -> list[str]:
    names = doc.get("names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        try:
            idx = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise SegbenchError(
                f"{yaml_file}: names keys must be class indices 0, 1, ..., got {list(names)[:5]}"
            ) from None
        if sorted(idx) != list(range(len(idx))):
            raise SegbenchError(
                f"{yaml_file}: names indices must be 0..{len(idx) - 1}, got {sorted(idx)[:10]}"
            )
        return [idx[k] for k in range(len(idx))]
    nc = doc.get("nc")
    if isinstance(nc, int) and nc > 0:
        return [f"class{k}" for k in range(nc)]
    raise SegbenchError(
        f"{yaml_file}: no class names; add names: [cat, dog, ...] (a list, or a dict {{0: cat, 1: dog}})"
    )


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _resolve(entry: str, base: Path, yaml_dir: Path) -> Path | None:
    p = Path(entry)
    cands = [p] if p.is_absolute() else [base / p, yaml_dir / p]
    if entry.startswith("../"):
        cands += [base / entry[3:], yaml_dir / entry[3:]]  # Ultralytics' fallback for Roboflow's paths
    return next((c for c in cands if c.exists()), None)


def find_splits(src: Path, writer: DatasetWriter) -> tuple[list[str], dict[str, list[Path]]]:
    """``(class names, {split: image files})`` of a YOLO dataset."""
    if src.is_dir():
        yamls = (
            [src / "data.yaml"]
            if (src / "data.yaml").is_file()
            else sorted(src.glob("*.yaml")) + sorted(src.glob("*.yml"))
        )
        if len(yamls) == 1:
            src = yamls[0]
        elif len(yamls) > 1:
            raise SegbenchError(
                f"{len(yamls)} YAML files in {src} ({', '.join(p.name for p in yamls[:5])}); pass in=FILE"
            )
    if src.is_file():
        doc = _load_yaml(src)
        if not isinstance(doc, dict):
            raise SegbenchError(f"{src}: an Ultralytics data.yaml is a mapping with names: and train:/val:")
        names = _names(doc, src)
        base = src.parent
        if isinstance(doc.get("path"), str) and doc["path"].strip():
            p = Path(doc["path"])
            cand = p if p.is_absolute() else src.parent / p
            if cand.is_dir():
                base = cand
            else:
                writer.log.note(
                    writer.show(src),
                    None,
                    "ignored",
                    f"path {doc['path']!r} not found: paths are read from the YAML's folder",
                )
        splits: dict[str, list[Path]] = {}
        read_from: dict[Path, str] = {}
        for key in SPLIT_KEYS:
            value = doc.get(key)
            if value is None:
                continue
            entries = value if isinstance(value, list) else [value]
            files: list[Path] = []
            for e in entries:
                r = _resolve(str(e), base, src.parent) if isinstance(e, str | Path) else None
                if r is None:
                    writer.log.skip(
                        writer.show(src),
                        f"{key}: {e!r}",
                        "missing_image",
                        f"{key} path {e!r} not found under {base}",
                    )
                    continue
                if r.resolve() in read_from:
                    other = read_from[r.resolve()]
                    msg = f"the same images as {other}: read once, as {other}"
                    writer.log.note(writer.show(src), f"{key}: {e!r}", "split", msg)
                    continue
                read_from[r.resolve()] = key
                files += _images_in(r) if r.is_dir() else _list_file(r)
            splits[key] = files
        if not splits:
            raise SegbenchError(f"{src}: no train:/val: paths; add train: images/train and val: images/val")
        return names, splits
    if not src.is_dir():
        raise SegbenchError(f"in={src}: no such file or folder")
    img_root = src / "images"
    if not img_root.is_dir():
        raise SegbenchError(f"no data.yaml in {src} and no images/ folder: expected an Ultralytics dataset")
    subs = [d for d in sorted(img_root.iterdir()) if d.is_dir()]
    splits = {d.name: _images_in(d) for d in subs} if subs else {"train": _images_in(img_root)}
    names_file = next((src / n for n in ("classes.txt", "obj.names") if (src / n).is_file()), None)
    if names_file is not None:
        names = [ln.strip() for ln in names_file.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    else:
        names = []
        writer.log.note(
            writer.show(src), None, "ignored", "no data.yaml or classes.txt: classes are named by their index"
        )
    return names, splits


def _list_file(path: Path) -> list[Path]:
    out = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line:
            continue
        p = Path(line)
        if not p.is_absolute():
            p = path.parent / (line[2:] if line.startswith("./") else line)
        out.append(p)
    return out


def read(src: Path, writer: DatasetWriter, opts: ImportOptions) -> None:
    """Read a YOLO segmentation dataset into ``writer`` (see the module docstring)."""
    names, splits = find_splits(src, writer)
    if names:
        writer.declare_classes(names)
    by_index = names
    for split, files in splits.items():
        seen_labels: set[Path] = set()
        for img in files:
            lp = label_path(img)
            seen_labels.add(lp.resolve())
            shown_label = writer.show(lp)
            text = ""
            if lp.is_file():
                try:
                    text = lp.read_text(encoding="utf-8-sig")
                except (OSError, UnicodeDecodeError) as e:
                    writer.log.skip(
                        shown_label,
                        None,
                        "unreadable_file",
                        f"cannot read the label file ({e}); its image is skipped",
                    )
                    continue
            try:
                name = img.resolve().relative_to(_split_root(img).resolve()).as_posix()
            except ValueError:
                name = img.name
            image = writer.add_image(normalize_split(split), name, path=img, file=writer.show(img))
            if image is None:
                continue
            if not lp.is_file():
                writer.log.note(
                    writer.show(img),
                    None,
                    "ignored",
                    f"no label file {shown_label}: an image without objects",
                )
                continue
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    _line(line, n, image, shown_label, by_index, writer, opts)
        for lp in _orphans(files, seen_labels):
            writer.log.skip(writer.show(lp), None, "orphan_label", "no image of this name in the split")


def _split_root(img: Path) -> Path:
    """The folder above the image's last ``images`` folder's child (``images/train``), else its parent."""
    parts = img.parts
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            return Path(*parts[: k + 2]) if k + 2 < len(parts) else Path(*parts[: k + 1])
    return img.parent


def _orphans(files: list[Path], seen: set[Path]) -> list[Path]:
    dirs = {label_path(f).parent for f in files}
    out = []
    for d in sorted(dirs):
        if d.is_dir():
            out += [p for p in sorted(d.glob("*.txt")) if p.resolve() not in seen and p.name != "classes.txt"]
    return out


def _line(
    line: str, n: int, image, shown: str, names: list[str], writer: DatasetWriter, opts: ImportOptions
) -> None:
    obj = f"line {n}"
    tokens = line.split()
    try:
        vals = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        writer.log.skip(
            shown, obj, "malformed", f"{bad!r} is not a number; a line is 'class x1 y1 x2 y2 ...'"
        )
        return
    if not all(math.isfinite(v) for v in vals):
        writer.log.skip(shown, obj, "malformed", "a coordinate is not a finite number (nan or inf)")
        return
    cls, coords = vals[0], vals[1:]
    if not cls.is_integer():
        writer.log.skip(shown, obj, "malformed", f"the class index {tokens[0]!r} is not an integer")
        return
    k = int(cls)
    if names and not 0 <= k < len(names):
        writer.log.skip(
            shown,
            obj,
            "unknown_label",
            f"class index {k} but data.yaml names {len(names)} classes (0..{len(names) - 1})",
        )
        return
    label = names[k] if names else str(k)
    obj += f" (class {k})"
    h, w = image.height, image.width
    if len(coords) == 4:
        if opts.boxes != "mask":
            writer.log.skip(shown, obj, "box_only", "a detection box 'class cx cy w h', not a polygon")
            return
        cx, cy, bw, bh = coords
        poly = rect_polygon((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
        writer.add_object(image, label, polygons=[poly], file=shown, obj=obj)
        return
    if len(coords) % 2 or len(coords) < 6:
        what = "an odd number of coordinates" if len(coords) % 2 else f"{len(coords) // 2} point(s)"
        writer.log.skip(shown, obj, "bad_polygon", f"{what} ({len(coords)} numbers after the class)")
        return
    xy = [_pixels(v, w if j % 2 == 0 else h) for j, v in enumerate(coords)]
    loops = split_loops(xy)
    if not loops:
        writer.log.skip(shown, obj, "bad_polygon", "the polygon has fewer than 3 distinct points")
        return
    polygons, rle = loops_to_shape(loops, h, w)
    writer.add_object(image, label, polygons=polygons or (), masks=[rle] if rle else (), file=shown, obj=obj)


def _pixels(v: float, size: int) -> float:
    """The pixel coordinate whose normalised value was written as ``v`` (``x / size * size`` is not always
    ``x`` in floating point): a 4-decimal number or a neighbour of ``v * size`` that divides back to
    exactly ``v``. An exported polygon comes back to within one float ulp, and so to the same pixels
    (pycocotools rounds vertices at 1/5 px: a vertex moved by rounding to 1e-4 px could change them).

    >>> _pixels(10.1 / 50, 50), _pixels(602.4999999999999 / 800, 800)
    (10.1, 602.4999999999999)
    """
    px = v * size
    for c in (round(px, 4), px, math.nextafter(px, math.inf), math.nextafter(px, -math.inf)):
        if c / size == v:
            return c
    return px


def _is_float(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True
