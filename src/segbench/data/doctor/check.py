"""Finding problems: :func:`check_dataset` reads a COCO JSON and its images and reports every problem.

The rules for one annotation are those of :mod:`segbench.data.annotations` (the loader's too); this
module adds what only a whole file shows: duplicate ids and category names, unsafe, missing or moved
files (found with the loader's lookup, :func:`~segbench.data.coco.resolve_image_path`, and by base name
under the image folder), image sizes, crowds, unused categories.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from segbench.data.annotations import (
    check_annotation,
    document_problem,
    image_entry_size,
    is_hashable,
    is_valid_id,
    placeholder_category_ids,
    reference_problem,
)
from segbench.data.coco import BaseNameIndex, default_image_root, default_root, resolve_image_path
from segbench.data.doctor.leakage import Fingerprint, fingerprint_image
from segbench.data.doctor.report import CheckReport, ImageFact, Issue
from segbench.io import read_json
from segbench.types import SegbenchError

#: how the lookup found a file whose name is not relative to the image folder (indirect_file_name)
_HOW = {
    "image_root": "written with backslashes or a file:// prefix",
    "image_folder_prefix": "starts with the image folder's own name",
    "root": "relative to the dataset folder",
    "ann_dir": "relative to the JSON's folder",
    "absolute": "an absolute path inside the dataset folder",
}


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


def _inspect_image(
    path: Path, *, read_pixels: bool, fingerprint: bool = False
) -> tuple[str, str, tuple | None, tuple | None, Fingerprint | None, float]:
    """(status, message, oriented (H, W), stored (H, W), fingerprint, seconds hashing) of an image file.

    ``fingerprint`` (with ``read_pixels``): the leakage fingerprint, from the bytes and pixels read here
    (the seconds count the hashing only: the file is read and decoded for the check anyway)."""
    if not path.is_file():
        return "missing", f"not found: {path}", None, None, None, 0.0
    fp, secs = None, 0.0
    try:
        if read_pixels and fingerprint:
            data = path.read_bytes()
            t0 = time.perf_counter()
            fp = Fingerprint(hashlib.sha256(data).hexdigest())
            secs += time.perf_counter() - t0
            opened = Image.open(io.BytesIO(data))
        else:
            opened = Image.open(path)
        with opened as im:
            w, h = im.size
            if read_pixels:
                im.load()
                exif = im.getexif()
                if fingerprint:
                    t0 = time.perf_counter()
                    fp = fingerprint_image(im, fp.file_sha256)
                    secs += time.perf_counter() - t0
            elif im.format == "PNG":  # PNG's getexif() reads the whole file; use the chunks seen so far
                exif = Image.Exif()
                if im.info.get("exif"):
                    exif.load(im.info["exif"])
            else:
                exif = im.getexif()
            orientation = exif.get(0x0112, 1)
    except Exception as e:  # noqa: BLE001 - any failure to read the file is the finding
        return "unreadable", f"cannot read {path.name}: {type(e).__name__}: {e}", None, None, fp, secs
    oriented = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    return "ok", "", oriented, (h, w), fp, secs


def _relative(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` as POSIX, or None when it is not inside."""
    try:
        return (
            Path(os.path.relpath(path, folder)).as_posix()
            if os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)
            else None
        )
    except ValueError:  # other drive (Windows)
        return None


def _candidates_text(cands: tuple[Path, ...], folder: Path, limit: int = 5) -> str:
    shown = [repr(_relative(c, folder) or str(c)) for c in cands[:limit]]
    return ", ".join(shown) + (f", ... ({len(cands)} in all)" if len(cands) > limit else "")


def check_dataset(
    ann_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
    max_dets: int | None = 100,
    read_images: bool = True,
    box_iou: float = 0.7,
    crowd_max_fraction: float = 0.25,
    fingerprint: bool = False,
) -> CheckReport:
    """Check a COCO instances JSON and its images; report every problem (see
    :mod:`segbench.data.annotations` for the kinds).

    Parameters
    ----------
    ann_file : path
        The COCO instances JSON.
    image_root : path, optional
        The folder ``file_name`` is relative to (default: as :class:`~segbench.data.coco.CocoDataset`).
    root : path, optional
        The dataset folder (``data.root``; default :func:`~segbench.data.coco.default_root`): names
        relative to it, or absolute inside it, are found (and reported as ``indirect_file_name``).
    max_dets : int or None
        Warn about images with more (non-crowd) objects than this; None or 0 turns it off.
    read_images : bool
        Decode every image's pixels (finds truncated files). False: check existence and read headers only.
    box_iou : float
        A bbox whose IoU with its mask's tight box is below this (and more than 2 px off) is an error.
    crowd_max_fraction : float
        An ``iscrowd=1`` mask of one connected component covering at most this fraction of the image is
        reported as an ordinary object.
    fingerprint : bool
        With ``read_images``: take each image's leakage fingerprint while it is read (file and pixel
        SHA-256, perceptual hash; :mod:`~segbench.data.doctor.leakage`), for
        :func:`~segbench.data.doctor.check_leakage`.

    Returns
    -------
    CheckReport

    Raises
    ------
    SegbenchError
        Only when ``ann_file`` cannot be read at all (missing, permissions).
    """
    ann_file = Path(ann_file)
    img_root = Path(image_root) if image_root is not None else default_image_root(ann_file)
    ds_root = Path(root) if root is not None else default_root(ann_file)
    sha, data, why = read_annotation_file(ann_file)
    rep = CheckReport(ann_file=ann_file, image_root=img_root, sha256=sha, root=ds_root)
    if data is None:
        rep.add("malformed_json", why or "not a COCO instances file")
        return rep
    images, cats, anns = data["images"], data["categories"], data.get("annotations", [])
    rep.num_images, rep.num_annotations, rep.num_categories = len(images), len(anns), len(cats)

    # -- categories -----------------------------------------------------------------------------------
    cat_names: dict[int, str] = {}
    cat_dicts: list[dict] = []
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
        cat_dicts.append({**c, "name": name})
    ids_by_name: dict[str, list[int]] = defaultdict(list)
    for cid, name in cat_names.items():
        ids_by_name[name].append(cid)
    for name, ids in ids_by_name.items():
        if len(ids) > 1:
            rep.add(
                "duplicate_category_name",
                f"category name {name!r} has the ids {ids}: two classes for one thing "
                f"(fix=true merges them into {ids[0]})",
            )

    # -- images ---------------------------------------------------------------------------------------
    index = BaseNameIndex(img_root)  # walked on first use only: when a name does not resolve
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

        path: Path | None = None
        look = resolve_image_path(fn, img_root, ann_dir=ann_file.parent, root=ds_root)
        base_cands = index.find(look.normalised.rsplit("/", 1)[-1]) if not look.found else ()
        if look.refused:
            msg = look.refused.replace(f"file_name {fn!r} is ", "", 1).replace(f"file_name {fn!r} ", "", 1)
            if len(base_cands) == 1:
                fact.rename_to = _relative(base_cands[0], img_root)
                fact.rename_why = "refused name; the file of its base name in the image folder"
                fact.recovered, path = True, base_cands[0]
                msg += f" ({fact.rename_to!r} is in the image folder: fix=true renames it)"
            else:
                fact.status = "unsafe"
                if base_cands:
                    msg += (
                        f" ({len(base_cands)} files of its base name are in the image folder: "
                        f"{_candidates_text(base_cands, img_root)}; fix=true does not guess and drops the image)"
                    )
            rep.add("unsafe_file_name", msg, image_id=iid, file_name=fn)
        elif not look.found:
            msg = f"not found: {look.path}"
            if len(base_cands) == 1:
                fact.rename_to = _relative(base_cands[0], img_root)
                fact.rename_why = "file not found; the one file of its base name in the image folder"
                fact.recovered, path = True, base_cands[0]
                msg += f"; found by its base name: {fact.rename_to!r} (fix=true rewrites file_name)"
            elif base_cands:
                fact.status = "missing"
                msg += (
                    f"; {len(base_cands)} files of its base name are in the image folder: "
                    f"{_candidates_text(base_cands, img_root)} (fix=true does not guess and drops the image)"
                )
            else:
                fact.status = "missing"
                msg += " (nor relative to the dataset folder or the JSON's folder, nor by its base name)"
            rep.add("missing_image", msg, image_id=iid, file_name=fn)
        else:
            path = look.path
            if not look.direct:
                rel = _relative(path, img_root)
                msg = f"{_HOW.get(look.how, look.how)}: found {path}"
                if rel is not None:
                    fact.rename_to, fact.rename_why = rel, f"file_name {_HOW.get(look.how, look.how)}"
                    msg += f" (fix=true rewrites it to {rel!r})"
                else:
                    msg += " (outside the image folder: fix=true leaves it)"
                rep.add("indirect_file_name", msg, image_id=iid, file_name=fn)
        fact.path = path

        size_state, json_hw = image_entry_size(im)
        if path is not None:
            status, msg, oriented, stored, fact.fingerprint, secs = _inspect_image(
                path, read_pixels=read_images, fingerprint=fingerprint
            )
            rep.fingerprint_seconds += secs
            if status != "ok":
                fact.recovered = False
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
    cat_usage: Counter = Counter()  # annotations that refer to a category
    cat_usable: Counter = Counter()  # ... of which the loader keeps
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
            cat_usable[cid] += 1  # cannot be judged: counts as a use
            continue
        a = check_annotation(ann, *hw, box_iou=box_iou, crowd_max_fraction=crowd_max_fraction)
        if a.unusable is None:
            cat_usable[cid] += 1
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
    placeholders = placeholder_category_ids(cat_dicts, {c for c, n in cat_usable.items() if n})
    if 0 in cat_names and 0 not in placeholders:
        rep.add(
            "category_id_zero",
            f"category 0 {cat_names[0]!r} is used by {cat_usage[0]} annotation(s)",
        )
    for cid, name in cat_names.items():
        if cat_usable[cid]:
            continue
        if cid in placeholders:
            why = "only names the dataset (the supercategory of all the others; Roboflow's habit): never a class"
        else:
            why = (
                "has no annotation"
                if not cat_usage[cid]
                else f"has only unusable annotations ({cat_usage[cid]})"
            )
            why += ": not trained as a class (data.keep_empty_classes=true trains it)"
        rep.add("unused_category", f"category {cid} {name!r} {why}")
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
