"""Finding problems: :func:`check_dataset` reads a COCO JSON and its images and reports every problem.

The rules for one annotation are those of :mod:`segbench.data.annotations` (the loader's too); this
module adds what only a whole file shows: duplicate ids, unsafe or missing files, image sizes, crowds.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path, PureWindowsPath
from typing import Any

from PIL import Image

from segbench.data.annotations import (
    check_annotation,
    document_problem,
    image_entry_size,
    is_hashable,
    is_valid_id,
    reference_problem,
)
from segbench.data.coco import default_image_root, safe_join
from segbench.data.doctor.report import CheckReport, ImageFact, Issue
from segbench.io import read_json
from segbench.types import SegbenchError


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (read in chunks), with the loader's error when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise SegbenchError(f"annotation file not found: {path}") from None
    except OSError as e:
        raise SegbenchError(f"cannot read {path}: {e}") from None
    return h.hexdigest()


def read_annotation_file(ann_file: Path) -> tuple[str, dict | None, str | None]:
    """``(sha256, data, None)`` of a COCO instances JSON, or ``(sha256, None, why)`` when it is not one.

    Raises
    ------
    SegbenchError
        Only when the file cannot be read at all (missing, a folder, permissions).
    """
    sha = file_sha256(ann_file)
    try:
        data = read_json(ann_file, what="COCO annotation file", hint="re-export the annotations")
    except SegbenchError as e:  # read a moment ago, so: not UTF-8 or not JSON
        return sha, None, str(e).replace(str(ann_file), ann_file.name, 1)
    problem = document_problem(data)
    if problem is not None:
        return sha, None, f"{ann_file.name}: {problem.message}"
    return sha, data, None


def _inspect_image(path: Path, *, read_pixels: bool) -> tuple[str, str, tuple | None, tuple | None]:
    """(status, message, oriented (H, W), stored (H, W)) of an image file."""
    if not path.is_file():
        return "missing", f"not found: {path}", None, None
    try:
        with Image.open(path) as im:
            w, h = im.size
            if read_pixels:
                im.load()
                exif = im.getexif()
            elif im.format == "PNG":  # PNG's getexif() reads the whole file; use the chunks seen so far
                exif = Image.Exif()
                if im.info.get("exif"):
                    exif.load(im.info["exif"])
            else:
                exif = im.getexif()
            orientation = exif.get(0x0112, 1)
    except Exception as e:  # noqa: BLE001 - any failure to read the file is the finding
        return "unreadable", f"cannot read {path.name}: {type(e).__name__}: {e}", None, None
    oriented = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    return "ok", "", oriented, (h, w)


def _base_name(file_name: str) -> str:
    return PureWindowsPath(file_name).name  # splits on / and \


def check_dataset(
    ann_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    max_dets: int | None = 100,
    read_images: bool = True,
    box_iou: float = 0.7,
    crowd_max_fraction: float = 0.25,
) -> CheckReport:
    """Check a COCO instances JSON and its images; report every problem (see
    :mod:`segbench.data.annotations` for the kinds).

    Parameters
    ----------
    ann_file : path
        The COCO instances JSON.
    image_root : path, optional
        The folder ``file_name`` is relative to (default: as :class:`~segbench.data.coco.CocoDataset`).
    max_dets : int or None
        Warn about images with more (non-crowd) objects than this; None or 0 turns it off.
    read_images : bool
        Decode every image's pixels (finds truncated files). False: check existence and read headers only.
    box_iou : float
        A bbox whose IoU with its mask's tight box is below this (and more than 2 px off) is an error.
    crowd_max_fraction : float
        An ``iscrowd=1`` mask of one connected component covering at most this fraction of the image is
        reported as an ordinary object.

    Returns
    -------
    CheckReport

    Raises
    ------
    SegbenchError
        Only when ``ann_file`` cannot be read at all (missing, permissions).
    """
    ann_file = Path(ann_file)
    root = Path(image_root) if image_root is not None else default_image_root(ann_file)
    sha, data, why = read_annotation_file(ann_file)
    rep = CheckReport(ann_file=ann_file, image_root=root, sha256=sha)
    if data is None:
        rep.add("malformed_json", why or "not a COCO instances file")
        return rep
    images, cats, anns = data["images"], data["categories"], data.get("annotations", [])
    rep.num_images, rep.num_annotations, rep.num_categories = len(images), len(anns), len(cats)

    # -- categories -----------------------------------------------------------------------------------
    cat_names: dict[int, str] = {}
    for k, c in enumerate(cats):
        cid = c.get("id") if isinstance(c, dict) else None
        if not (isinstance(cid, int) and not isinstance(cid, bool)):
            rep.add("malformed_entry", f"categories[{k}] needs an integer 'id', got {str(c)[:120]}")
            continue
        name = str(c.get("name", cid))
        if cid in cat_names:
            rep.add(
                "duplicate_category_id",
                f"category id {cid} names both {cat_names[cid]!r} and {name!r} (categories[{k}])",
            )
            continue
        cat_names[cid] = name

    # -- images ---------------------------------------------------------------------------------------
    first_by_id: dict = {}  # image id -> index of its first entry
    files_seen: dict[str, Any] = {}  # file name -> first image id
    eff_hw: dict = {}  # image id -> (H, W) the annotations are checked against
    for k, im in enumerate(images):
        fact = ImageFact(index=k)
        rep.image_facts.append(fact)
        iid = im.get("id") if isinstance(im, dict) else None
        fn = im.get("file_name") if isinstance(im, dict) else None
        fact.image_id, fact.file_name = iid, fn
        if not is_valid_id(iid) or not isinstance(fn, str) or not fn:
            fact.status = "malformed"
            rep.add(
                "malformed_entry",
                f"images[{k}] needs an id and a non-empty file_name, got {str(im)[:120]}",
                image_id=iid if is_hashable(iid) else None,
            )
            continue
        if iid in first_by_id:
            first = rep.image_facts[first_by_id[iid]]
            same = first.file_name == fn
            rep.add(
                "duplicate_image_id",
                f"images[{k}] repeats id {iid} of images[{first.index}] "
                + (
                    "(the same file listed twice)"
                    if same
                    else f"({first.file_name!r}): annotations of id {iid} are ambiguous"
                ),
                image_id=iid,
                file_name=fn,
            )
        if fn in files_seen and files_seen[fn] != iid:
            rep.add(
                "duplicate_file_name",
                f"also listed as image id {files_seen[fn]}",
                image_id=iid,
                file_name=fn,
            )
        files_seen.setdefault(fn, iid)

        path: Path | None
        try:
            path = safe_join(root, fn, where=f"image id {iid}")
        except SegbenchError as e:
            base = _base_name(fn)
            cand = root / base if base not in ("", ".", "..") else None
            fact.rename_to = base if cand is not None and cand.is_file() else None
            msg = str(e).split(": ", 1)[-1]
            if fact.rename_to:
                msg += f" ({base!r} is in the image folder: fix=true renames it)"
            rep.add("unsafe_file_name", msg, image_id=iid, file_name=fn)
            path = cand if fact.rename_to else None
            if path is None:
                fact.status = "unsafe"

        size_state, json_hw = image_entry_size(im)
        if path is not None:
            status, msg, oriented, stored = _inspect_image(path, read_pixels=read_images)
            if status != "ok":
                fact.status = status
                rep.add(f"{status}_image", msg, image_id=iid, file_name=fn)
            else:
                fact.actual_hw = oriented
                if size_state == "missing":
                    fact.size_ok = False
                    rep.add(
                        "missing_size",
                        f"no width/height; the file is {oriented[1]}x{oriented[0]} (WxH)",
                        image_id=iid,
                        file_name=fn,
                    )
                elif size_state == "invalid":
                    fact.size_ok = False
                    rep.add(
                        "size_mismatch",
                        f"width/height {im.get('width')!r}x{im.get('height')!r} are not positive integers; "
                        f"the file is {oriented[1]}x{oriented[0]} (WxH)",
                        image_id=iid,
                        file_name=fn,
                    )
                elif json_hw not in (oriented, stored):
                    fact.size_ok = False
                    rep.add(
                        "size_mismatch",
                        f"the JSON says {json_hw[1]}x{json_hw[0]} (WxH) but the file is "
                        f"{oriented[1]}x{oriented[0]}",
                        image_id=iid,
                        file_name=fn,
                    )
        if iid not in first_by_id:
            first_by_id[iid] = k
            eff_hw[iid] = json_hw if (fact.size_ok and json_hw) else (fact.actual_hw or json_hw)

    # -- annotations ----------------------------------------------------------------------------------
    seen_ann: set = set()
    per_image: Counter = Counter()
    crowd_issues: list[Issue] = []
    n_valid = n_crowd = 0
    cat_usage: Counter = Counter()
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict):
            rep.add("malformed_entry", f"annotations[{k}] is not an object: {str(ann)[:120]}")
            continue
        aid, iid, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        aid_ok = is_valid_id(aid)
        show_aid = aid if aid_ok else None
        fn = images[first_by_id[iid]].get("file_name") if is_hashable(iid) and iid in first_by_id else None
        if not aid_ok:
            rep.add("malformed_entry", f"annotations[{k}] has no valid id ({aid!r})", image_id=iid)
        elif aid in seen_ann:
            rep.add(
                "duplicate_ann_id",
                f"annotations[{k}] repeats id {aid}",
                image_id=iid,
                ann_id=aid,
                file_name=fn,
            )
        if aid_ok:
            seen_ann.add(aid)
        problem = reference_problem(ann, first_by_id, cat_names)
        if problem is not None:
            if problem.kind == "malformed_entry":
                rep.add(problem.kind, f"annotations[{k}] has {problem.message}", ann_id=show_aid)
            else:
                rep.issues.append(Issue.of(problem, image_id=iid, ann_id=show_aid, file_name=fn))
            continue
        cat_usage[cid] += 1
        hw = eff_hw.get(iid)
        if hw is None:  # no size in the JSON and no readable file: reported with the image
            continue
        a = check_annotation(ann, *hw, box_iou=box_iou, crowd_max_fraction=crowd_max_fraction)
        for p in a.problems:
            issue = Issue.of(p, image_id=iid, ann_id=show_aid, file_name=fn)
            (crowd_issues if p.kind == "crowd_object" else rep.issues).append(issue)
        if not a.has_error:
            n_valid += 1
            if ann.get("iscrowd"):
                n_crowd += 1
            else:
                per_image[iid] += 1

    if n_valid and n_crowd == n_valid:
        rep.add(
            "all_crowd",
            f"all {n_valid} usable annotations are iscrowd=1: training and evaluation would ignore them all",
        )
    else:
        rep.issues.extend(crowd_issues)
    if 0 in cat_names:
        rep.add(
            "category_id_zero",
            f"category 0 {cat_names[0]!r} is used by {cat_usage[0]} annotation(s)",
        )
    if max_dets:
        for iid, n in per_image.items():
            if n > max_dets:
                rep.add(
                    "too_many_objects",
                    f"{n} objects > max_dets={max_dets}",
                    image_id=iid,
                    file_name=images[first_by_id[iid]].get("file_name"),
                )
    return rep
