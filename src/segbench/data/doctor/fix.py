"""Repairing: :func:`fix_dataset` writes a corrected copy of a checked COCO JSON beside it (never over it)
and ``<stem>.fixes.log``, one line per change. What it does for each kind is in the table of
:mod:`segbench.data.annotations`; the kinds of :data:`~segbench.data.annotations.LEFT_ALONE` stay."""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from pathlib import Path

from pycocotools import mask as mask_utils

from segbench.data.annotations import (
    ERROR,
    check_annotation,
    clip_box,
    format_box,
    image_entry_size,
    is_hashable,
    is_valid_id,
)
from segbench.data.doctor.check import read_annotation_file
from segbench.data.doctor.report import CheckReport
from segbench.io import atomic_write_text, write_json
from segbench.types import SegbenchError

log = logging.getLogger(__name__)


class FixLog(list):
    """The changes of :func:`fix_dataset`, one line each (a list of str), with the images counted:
    ``recovered`` (missing or refused, their file found: ``file_name`` rewritten), ``renamed`` (found by
    the lookup but not relative to the image folder: ``file_name`` rewritten), ``dropped_images`` and
    ``dropped_annotations``."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.recovered = 0
        self.renamed = 0
        self.dropped_images = 0
        self.dropped_annotations = 0

    def summary(self) -> str:
        """``'images: 2 recovered, 1 renamed, 3 dropped; annotations: 5 dropped'``."""
        return (
            f"images: {self.recovered} recovered (file found, file_name rewritten), {self.renamed} "
            f"file_name(s) rewritten relative to the image folder, {self.dropped_images} dropped; "
            f"annotations: {self.dropped_annotations} dropped"
        )


def fixes_log_path(ann_file: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """``<stem>.fixes.log`` beside the fixed JSON.

    >>> fixes_log_path("data/annotations/instances_train.json", "data/annotations/x.json").as_posix()
    'data/annotations/instances_train.fixes.log'
    """
    return Path(out_file).with_name(f"{Path(ann_file).stem}.fixes.log")


def _repair_annotation(
    ann: dict, hw: tuple[int, int], *, crowd_to_zero: bool, box_iou: float, crowd_max_fraction: float
) -> tuple[dict | None, list[str]]:
    """A corrected copy of one annotation and what changed, or (None, [why]) when it must go."""
    h, w = hw
    a = check_annotation(ann, h, w, box_iou=box_iou, crowd_max_fraction=crowd_max_fraction)
    kinds = {p.kind for p in a.problems}
    new, notes = dict(ann), []
    for fatal in ("rle_size_mismatch", "empty_mask"):
        if fatal in kinds:
            return None, [a.first(fatal).message]
    if a.rle is None and not a.box_only:
        why = next((p.message for p in a.problems if p.severity == ERROR), "unusable segmentation")
        return None, [why]
    if a.parts is not None:
        raw_parts = [ann["segmentation"]] if a.flat_polygon else ann["segmentation"]
        if a.flat_polygon or len(a.parts) != len(raw_parts):
            new["segmentation"] = [list(p) for p in a.parts]
            if a.flat_polygon:
                notes.append("flat polygon wrapped in a list")
            if len(a.parts) != len(raw_parts):
                notes.append(
                    f"dropped {len(raw_parts) - len(a.parts)} bad polygon part(s) ({a.first('bad_polygon').message})"
                )
    if a.rle is not None:
        mb = [round(float(v), 2) for v in mask_utils.toBbox(a.rle)]
        if a.bbox is None or kinds & {"bad_box", "box_mask_mismatch"}:
            new["bbox"] = mb
            was = format_box(a.bbox) if a.bbox is not None else repr(ann.get("bbox"))
            notes.append(f"bbox {was} -> {format_box(mb)} (the mask's box)")
        elif "box_outside_image" in kinds:
            new["bbox"] = clip_box(a.bbox, h, w)
            notes.append(f"bbox {format_box(a.bbox)} clipped to {format_box(new['bbox'])}")
        area = a.area
    else:  # box only
        if "bad_box" in kinds:
            return None, [a.first("bad_box").message]
        if "box_outside_image" in kinds:
            new["bbox"] = clip_box(a.bbox, h, w)
            notes.append(f"bbox {format_box(a.bbox)} clipped to {format_box(new['bbox'])}")
        area = float(new["bbox"][2] * new["bbox"][3])
    if kinds & {"bad_area", "area_mismatch"}:
        new["area"] = area
        notes.append(f"area {ann.get('area')!r} -> {area:g} (the mask's pixels)")
    if ann.get("iscrowd") and (crowd_to_zero or a.single_crowd):
        new["iscrowd"] = 0
        notes.append(f"iscrowd {ann.get('iscrowd')!r} -> 0")
    again = check_annotation(new, h, w, box_iou=box_iou, crowd_max_fraction=crowd_max_fraction)
    if again.has_error:  # defensive: a repair must leave nothing the check calls an error
        return None, ["still invalid after repair: " + "; ".join(p.message for p in again.problems)]
    return new, notes


def fix_dataset(
    ann_file: str | os.PathLike,
    report: CheckReport,
    out_file: str | os.PathLike | None = None,
    *,
    box_iou: float = 0.7,
    crowd_max_fraction: float = 0.25,
) -> tuple[Path, FixLog]:
    """Write a corrected copy of ``ann_file`` and a log of every change.

    Parameters
    ----------
    ann_file : path
        The checked COCO JSON (left untouched).
    report : CheckReport
        What :func:`~segbench.data.doctor.check_dataset` found in this very file (its image facts are
        reused: no image is read again).
    out_file : path, optional
        Default ``<stem>.fixed.json`` beside ``ann_file``. The log is ``<stem>.fixes.log`` beside it.
        Both are written atomically.
    box_iou, crowd_max_fraction : float
        As for :func:`~segbench.data.doctor.check_dataset`.

    Returns
    -------
    (Path, FixLog)
        The fixed JSON and one line per change, with ids (a list of str that also counts the images
        recovered and dropped, :class:`FixLog`).

    Raises
    ------
    SegbenchError
        When ``out_file`` is ``ann_file``, the report is of another file or of an older version of it,
        or the file is not COCO JSON at all.
    """
    ann_file = Path(ann_file)
    out = Path(out_file) if out_file is not None else ann_file.with_name(f"{ann_file.stem}.fixed.json")
    if out.resolve() == ann_file.resolve():
        raise SegbenchError(f"refusing to overwrite the original {ann_file}; write the fixed JSON elsewhere")
    if Path(report.ann_file).resolve() != ann_file.resolve():
        raise SegbenchError(f"the report is of {report.ann_file}, not of {ann_file}; check {ann_file} first")
    sha, data, why = read_annotation_file(ann_file)
    if sha != report.sha256:
        raise SegbenchError(f"{ann_file} changed since it was checked; check it again before fixing")
    if data is None:
        raise SegbenchError(f"cannot fix {ann_file}: {why}; re-export the annotations")
    changes = FixLog()

    # -- categories -----------------------------------------------------------------------------------
    cats, cat_names = [], {}
    for k, c in enumerate(data["categories"]):
        cid = c.get("id") if isinstance(c, dict) else None
        if not (isinstance(cid, int) and not isinstance(cid, bool)):
            changes.append(f"dropped categories[{k}] {str(c)[:80]}: no integer id")
            continue
        if cid in cat_names:
            changes.append(
                f"dropped category {cid} {c.get('name')!r} (categories[{k}]): duplicate id; its annotations "
                f"now count as {cat_names[cid]!r}"
            )
            continue
        cat_names[cid] = c.get("name", cid)
        cats.append(c)
    merge: dict[int, int] = {}  # category id -> the first id of the same name
    first_of_name: dict[str, int] = {}
    for c in list(cats):
        name = str(c.get("name", c["id"]))
        if name in first_of_name:
            merge[c["id"]] = first_of_name[name]
            cats.remove(c)
        else:
            first_of_name[name] = c["id"]
    if 0 in cat_names:
        changes.append(
            f"note: category 0 {cat_names[0]!r} left alone (legal COCO; remove it if it is background)"
        )

    # -- images ---------------------------------------------------------------------------------------
    facts = report.image_facts
    if len(facts) != len(data["images"]):
        raise SegbenchError(f"the report does not match {ann_file}; check it again before fixing")
    files_by_id: dict = defaultdict(set)
    for f in facts:
        if f.status != "malformed":
            files_by_id[f.image_id].add(f.file_name)
    kept_images, hw_by_id, dropped_ids = [], {}, {}
    for f, im in zip(facts, data["images"], strict=True):
        where = f"image {f.image_id} {f.file_name!r}"
        if f.status == "malformed":
            changes.append(f"dropped images[{f.index}] {str(im)[:80]}: no id or file_name")
            changes.dropped_images += 1
            continue
        if len(files_by_id[f.image_id]) > 1:
            changes.append(
                f"dropped {where}: id {f.image_id} names several files (its annotations are ambiguous)"
            )
            changes.dropped_images += 1
            dropped_ids[f.image_id] = "its image id names several files"
            continue
        if f.image_id in hw_by_id:
            changes.append(f"dropped images[{f.index}] ({where}): the same image listed again")
            continue
        if f.status in ("missing", "unreadable", "unsafe"):
            what = {
                "missing": "file not found",
                "unreadable": "unreadable file",
                "unsafe": "unsafe file_name",
            }
            changes.append(f"dropped {where} and its annotations: {what[f.status]}")
            dropped_ids.setdefault(f.image_id, f"its image was dropped ({what[f.status]})")
            changes.dropped_images += 1
            continue
        new = dict(im)
        if f.rename_to:
            new["file_name"] = f.rename_to
            changes.append(
                f"{where}: file_name -> {f.rename_to!r}" + (f" ({f.rename_why})" if f.rename_why else "")
            )
            if f.recovered:
                changes.recovered += 1
            else:
                changes.renamed += 1
        if not f.size_ok and f.actual_hw:
            h, w = f.actual_hw
            was = (
                "no width/height"
                if image_entry_size(im)[0] == "missing"
                else f"{im.get('width')!r}x{im.get('height')!r}"
            )
            changes.append(f"{where}: {was} -> {w}x{h} (WxH, from the file)")
            new["height"], new["width"] = h, w
        _, json_hw = image_entry_size(new)
        hw = json_hw or f.actual_hw
        if hw is None:
            changes.append(f"dropped {where}: its size is unknown")
            changes.dropped_images += 1
            dropped_ids.setdefault(f.image_id, "its image was dropped (size unknown)")
            continue
        hw_by_id[f.image_id] = hw
        kept_images.append(new)
    seen_files: dict = {}
    for im in kept_images:
        first = seen_files.setdefault(im["file_name"], im["id"])
        if first != im["id"]:
            changes.append(
                f"note: image {im['id']} {im['file_name']!r} left alone although image {first} names the "
                "same file; merge them by hand"
            )

    # -- annotations ----------------------------------------------------------------------------------
    anns = data.get("annotations", [])
    all_crowd = any(i.kind == "all_crowd" for i in report.issues)
    int_ids = [a["id"] for a in anns if isinstance(a, dict) and isinstance(a.get("id"), int)]
    next_id = max(int_ids, default=0) + 1
    used: set = set()
    kept_anns = []
    merged: Counter = Counter()
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict):
            changes.append(f"dropped annotations[{k}]: not an object")
            continue
        aid, iid, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        where = f"annotation {aid} (annotations[{k}], image {iid})"
        if not (is_valid_id(iid) and iid in hw_by_id):
            why = dropped_ids.get(iid, "unknown image id") if is_hashable(iid) else "unknown image id"
            changes.append(f"dropped {where}: {why}")
            changes.dropped_annotations += 1
            continue
        if not (is_hashable(cid) and cid in cat_names):
            changes.append(f"dropped {where}: unknown category id {cid!r}")
            changes.dropped_annotations += 1
            continue
        if cid in merge:
            ann = {**ann, "category_id": merge[cid]}
            merged[cid] += 1
        new, notes = _repair_annotation(
            ann,
            hw_by_id[iid],
            crowd_to_zero=all_crowd,
            box_iou=box_iou,
            crowd_max_fraction=crowd_max_fraction,
        )
        if new is None:
            changes.append(f"dropped {where}: {notes[0]}")
            changes.dropped_annotations += 1
            continue
        if not is_valid_id(aid) or aid in used:
            new["id"] = next_id
            changes.append(
                f"{where}: id {aid!r} -> {next_id} ({'duplicate' if is_valid_id(aid) else 'missing'} id)"
            )
            next_id += 1
        used.add(new["id"])
        changes.extend(f"{where}: {n}" for n in notes)
        kept_anns.append(new)

    for cid, into in merge.items():
        changes.append(
            f"merged category {cid} {cat_names[cid]!r} into {into} (the same name): "
            f"{merged[cid]} annotation(s) now of category {into}"
        )

    data = {**data, "images": kept_images, "annotations": kept_anns, "categories": cats}
    log_file = fixes_log_path(ann_file, out)
    try:
        write_json(out, data, indent=None)
        atomic_write_text(
            log_file,
            f"# segbench data check fix=true: {ann_file} -> {out}, {len(changes)} line(s); "
            f"{changes.summary()}\n" + "".join(c + "\n" for c in changes),
        )
    except OSError as e:
        raise SegbenchError(f"cannot write the fixed dataset beside {ann_file}: {e}") from None
    log.info("wrote %s (%d change(s), log %s): %s", out, len(changes), log_file, changes.summary())
    return out, changes
