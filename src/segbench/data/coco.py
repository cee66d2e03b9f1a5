"""COCO instances JSON + image folder -> RGB images and per-image :class:`~segbench.types.Instances`.

Reading a dataset builds a light index (images, per-image annotation lists, the category map) and
decodes nothing: masks are decoded per item, when an item is asked for. What the loader does with the
awkward parts of real exports:

* polygons with several parts, compressed and uncompressed RLE are all accepted;
* ``iscrowd=1`` objects are kept as crowd regions (``Instances.iscrowd``) for evaluation; training
  excludes them from its targets;
* category ids that are not ``1..K`` (0-based, gaps) are mapped to contiguous labels ``1..K``, and
  :attr:`CocoDataset.label_to_cat_id` maps them back when results are written;
* images without annotations are kept (negatives);
* greyscale, RGBA, palette and 16-bit images become RGB uint8; EXIF orientation is applied;
* boxes and polygons partly outside the image are clipped; annotations no mask can be made of (no area,
  fewer than 3 points, entirely outside the image, unknown category or image...: the rules of
  :mod:`segbench.data.annotations`) are dropped, counted under their problem kind and logged once with
  their ids;
* a ``file_name`` that escapes the image folder (absolute path, ``..``) is refused.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

from segbench.data.annotations import (
    KINDS,
    check_annotation,
    decode_annotation,
    document_problem,
    reference_problem,
)
from segbench.io import read_json
from segbench.types import Instances, SegbenchError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL image -> ``(H, W, 3) uint8`` RGB.

    Greyscale and palette images are expanded to three channels, the alpha channel is dropped, and
    16-bit / 32-bit / float images are scaled linearly so that their maximum becomes 255 (images whose
    values already fit 0..255 are kept as they are).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = min(a.min(), 0.0), a.max()
        if hi > 255 or lo < 0:
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy


def read_image(path: str | os.PathLike, *, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB, EXIF orientation applied.

    If ``expected_size`` (H, W) is given and only the image *without* its EXIF rotation has that size,
    the annotations were drawn on the stored pixels, so those are returned instead.

    Raises
    ------
    SegbenchError
        When the file is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            oriented = ImageOps.exif_transpose(im)
            if (
                expected_size is not None
                and oriented.size[::-1] != tuple(expected_size)
                and im.size[::-1] == tuple(expected_size)
            ):
                oriented = im
            return to_rgb_uint8(oriented)
    except FileNotFoundError:
        raise SegbenchError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SegbenchError(
            f"cannot read image {path}: {e}. The file is corrupt, truncated or not an image; "
            "re-export it or remove it from the dataset (`segbench data check` lists all such files)."
        ) from None


def image_size_from_header(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image after EXIF orientation, reading only its header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise SegbenchError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise SegbenchError(f"cannot read image {path}: {e}") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def safe_join(root: Path, file_name: str, *, where: str) -> Path:
    """``root / file_name``, refusing names that would leave ``root``."""
    if not isinstance(file_name, str) or not file_name:
        raise SegbenchError(f"{where}: file_name must be a non-empty string, got {file_name!r}")
    p = Path(file_name)
    if p.is_absolute() or file_name.startswith(("/", "\\")) or (len(file_name) > 1 and file_name[1] == ":"):
        raise SegbenchError(
            f"{where}: file_name {file_name!r} is an absolute path; COCO file names must be relative to the "
            f"image folder ({root}). Rewrite it relative to that folder."
        )
    if ".." in p.parts or ".." in Path(file_name.replace("\\", "/")).parts:
        raise SegbenchError(
            f"{where}: file_name {file_name!r} contains '..' and would leave the image folder {root}; "
            "move the image inside that folder and name it relative to it."
        )
    return root / p


# --------------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------------
@dataclass
class DropReport:
    """Annotations dropped while indexing, by problem kind: ``{kind: [annotation ids]}``.

    The kinds are those of :data:`segbench.data.annotations.KINDS` (the doctor reports the same names).
    """

    by_reason: dict[str, list] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, ann_id) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; the kinds are the keys of KINDS")
        self.by_reason[kind].append(ann_id)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.by_reason.values())

    def summary(self, limit: int = 10) -> str:
        parts = []
        for kind, ids in sorted(self.by_reason.items()):
            shown = ", ".join(str(i) for i in ids[:limit]) + (", ..." if len(ids) > limit else "")
            parts.append(f"{len(ids)} {kind} (ids {shown})")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One item of a dataset: the RGB image, its instances and where it came from."""

    image: np.ndarray  # (H, W, 3) uint8
    instances: Instances
    image_id: int
    file_name: str


def read_coco_json(path: str | os.PathLike) -> dict:
    """Read a COCO instances JSON (a UTF-8 byte-order mark is fine); a :class:`SegbenchError` naming the
    file and the fix when it is missing, not JSON or not a COCO object."""
    data = read_json(path, what="COCO annotation file", hint="re-export the annotations")
    problem = document_problem(data)
    if problem is not None:
        raise SegbenchError(f"{path}: {problem.message}")
    return data


class CocoDataset:
    """A COCO instance-segmentation dataset: a JSON file plus a folder of images.

    Parameters
    ----------
    ann_file : path
        The COCO instances JSON.
    image_root : path, optional
        The folder that ``file_name`` entries are relative to. Default: ``<ann_file>/../../images`` when
        the JSON sits in an ``annotations/`` folder (the ``data.root`` layout), else the JSON's folder.
    check_files : bool
        Refuse the dataset at once when an image file is missing (cheap: ``stat`` only).

    Indexing decodes nothing; ``dataset[i]`` reads image ``i`` and decodes its masks.

    Attributes
    ----------
    categories : list of dict
        The COCO categories sorted by id.
    cat_id_to_label, label_to_cat_id : dict
        COCO category id <-> contiguous label ``1..K``.
    class_names : list of str
        ``class_names[label - 1]`` is the name of a label.
    dropped : DropReport
        Annotations dropped, by reason.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        *,
        check_files: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root) if image_root is not None else default_image_root(self.ann_file)
        data = read_coco_json(self.ann_file)
        self._index(data)
        if check_files:
            missing = [im["file_name"] for im in self.images if not self.image_path(im).is_file()]
            if missing:
                raise SegbenchError(
                    f"{len(missing)} image file(s) named in {self.ann_file} are missing from {self.image_root}: "
                    + ", ".join(missing[:5])
                    + (" ..." if len(missing) > 5 else "")
                    + ". Check data.image_root or run `segbench data check`."
                )

    # -- indexing ---------------------------------------------------------------------------------
    def _index(self, data: dict) -> None:
        src = self.ann_file
        anns = data.get("annotations", [])
        cats = []
        for c in data["categories"]:
            if not isinstance(c, dict) or "id" not in c:
                raise SegbenchError(f"{src}: every category needs an 'id', got {c!r}")
            cats.append(
                {
                    "id": int(c["id"]),
                    "name": str(c.get("name", c["id"])),
                    **{k: v for k, v in c.items() if k not in ("id", "name")},
                }
            )
        ids = [c["id"] for c in cats]
        dup = [i for i, n in Counter(ids).items() if n > 1]
        if dup:
            raise SegbenchError(f"{src}: duplicate category ids {dup}; each category needs its own id")
        self.categories = sorted(cats, key=lambda c: c["id"])
        self.cat_id_to_label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.class_names = [c["name"] for c in self.categories]

        self.images: list[dict] = []
        seen: set = set()
        for k, im in enumerate(data["images"]):
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise SegbenchError(f"{src}: images[{k}] needs 'id' and 'file_name', got {str(im)[:200]}")
            if im["id"] in seen:
                raise SegbenchError(
                    f"{src}: duplicate image id {im['id']} (images[{k}], {im['file_name']!r}); image ids must be "
                    "unique: give each image its own id (`segbench data check` lists every duplicate; fix=true keeps one "
                    "entry when they name the same file)"
                )
            seen.add(im["id"])
            entry = {
                "id": im["id"],
                "file_name": im["file_name"],
                "height": im.get("height"),
                "width": im.get("width"),
            }
            safe_join(self.image_root, im["file_name"], where=f"{src}: image id {im['id']}")
            self.images.append(entry)
        self._pos = {im["id"]: i for i, im in enumerate(self.images)}

        self.dropped = DropReport()
        per_image: dict[int, list[dict]] = defaultdict(list)
        seen_ann: set = set()
        for ann in anns:
            aid = ann.get("id") if isinstance(ann, dict) else None
            if not isinstance(ann, dict):
                self.dropped.add("malformed_entry", aid)
                continue
            if aid in seen_ann:
                self.dropped.add("duplicate_ann_id", aid)
                continue
            seen_ann.add(aid)
            problem = reference_problem(ann, self._pos, self.cat_id_to_label)
            if problem is not None:
                self.dropped.add(problem.kind, aid)
                continue
            im = self.images[self._pos[ann["image_id"]]]
            if im["height"] is None or im["width"] is None:
                h, w = image_size_from_header(self.image_path(im))
                im["height"], im["width"] = h, w
            unusable = check_annotation(ann, int(im["height"]), int(im["width"]), decode=False).unusable
            if unusable is not None:
                self.dropped.add(unusable.kind, aid)
                continue
            per_image[ann["image_id"]].append(ann)
        self._anns = [per_image.get(im["id"], []) for im in self.images]
        self.num_annotations = sum(len(a) for a in self._anns)
        if self.dropped.total:
            log.warning(
                "%s: dropped %d annotation(s): %s (`segbench data check` says why, with the fix)",
                src.name,
                self.dropped.total,
                self.dropped.summary(),
            )

    # -- access -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def image_path(self, im: dict | int) -> Path:
        im = self.images[im] if isinstance(im, int) else im
        return safe_join(self.image_root, im["file_name"], where=f"{self.ann_file}: image id {im['id']}")

    def annotations(self, i: int) -> list[dict]:
        """The raw (kept) COCO annotations of image ``i``."""
        return self._anns[i]

    def image_size(self, i: int) -> tuple[int, int]:
        im = self.images[i]
        if im["height"] is None or im["width"] is None:
            im["height"], im["width"] = image_size_from_header(self.image_path(im))
        return int(im["height"]), int(im["width"])

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as ``(H, W, 3) uint8``; a size different from the JSON's is an error."""
        h, w = self.image_size(i)
        img = read_image(self.image_path(i), expected_size=(h, w))
        if img.shape[:2] != (h, w):
            im = self.images[i]
            raise SegbenchError(
                f"{self.image_path(i)} is {img.shape[1]}x{img.shape[0]} (WxH) but {self.ann_file.name} says "
                f"{w}x{h} for image id {im['id']}; fix the JSON's width/height (`segbench data check fix=true`)"
            )
        return img

    def load_instances(self, i: int) -> Instances:
        """Decode the masks of image ``i``: boxes are the masks' tight boxes (so clipped to the image)."""
        h, w = self.image_size(i)
        anns = self._anns[i]
        rles, labels, crowd, keep_ids = [], [], [], []
        for ann in anns:
            rle = decode_annotation(ann, h, w)
            if mask_utils.area(rle) == 0:
                if ann.get("id") not in self._empty_logged:
                    self._empty_logged.add(ann.get("id"))
                    log.warning(
                        "%s: annotation id %s of image id %s has an empty mask after clipping (empty_mask); "
                        "dropped",
                        self.ann_file.name,
                        ann.get("id"),
                        ann["image_id"],
                    )
                continue
            rles.append(rle)
            labels.append(self.cat_id_to_label[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
            keep_ids.append(ann.get("id"))
        if rles:
            bb = mask_utils.toBbox(rles).reshape(-1, 4)
            boxes = bb.copy()
            boxes[:, 2:] += boxes[:, :2]
        else:
            boxes = np.zeros((0, 4), np.float32)
        return Instances(
            image_size=(h, w),
            boxes=boxes,
            labels=np.asarray(labels, np.int64),
            rles=rles,
            iscrowd=np.asarray(crowd, bool),
            extra={"ann_ids": keep_ids},
        )

    @property
    def _empty_logged(self) -> set:
        if not hasattr(self, "_empty_logged_set"):
            self._empty_logged_set: set = set()
        return self._empty_logged_set

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        i %= len(self)
        im = self.images[i]
        return Sample(
            image=self.load_image(i),
            instances=self.load_instances(i),
            image_id=im["id"],
            file_name=im["file_name"],
        )

    def __repr__(self) -> str:
        return (
            f"CocoDataset({str(self.ann_file)!r}, images={len(self)}, annotations={self.num_annotations}, "
            f"classes={self.class_names})"
        )


class MissingSplitError(SegbenchError):
    """A dataset folder has no annotation file for the split asked for."""


def split_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``(annotations/instances_<split>.json, images/)`` of a dataset folder."""
    root = Path(root)
    return root / "annotations" / f"instances_{split}.json", root / "images"


def default_image_root(ann_file: str | os.PathLike) -> Path:
    """The image folder of a JSON: ``../images`` beside an ``annotations/`` folder, else the JSON's folder."""
    parent = Path(ann_file).parent
    return parent.parent / "images" if parent.name == "annotations" else parent


def resolve_split(
    root: str | os.PathLike | None,
    split: str,
    *,
    ann_file: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """``(annotation JSON, image folder)`` of one split — ``root`` in the standard layout, or an explicit
    JSON (``data.<split>_ann``) and image folder — with a clear error when they are not there."""
    if ann_file is not None:
        ann = Path(ann_file)
        if not ann.is_file():
            raise SegbenchError(f"annotation file not found: {ann} (data.{split}_ann)")
        return ann, Path(image_root) if image_root else default_image_root(ann)
    if root is None:
        raise SegbenchError("no dataset given: set data.root=DIR (or data.<split>_ann and data.image_root)")
    if not Path(root).is_dir():
        raise SegbenchError(
            f"data.root={root} is not a folder. Point data.root at a folder holding images/ and "
            "annotations/instances_<split>.json (e.g. `segbench data synth out=data/synth`)."
        )
    ann, images = split_paths(root, split)
    if not ann.is_file():
        have = sorted(p.name for p in (Path(root) / "annotations").glob("*.json"))
        raise MissingSplitError(
            f"no annotations for split '{split}': {ann} does not exist"
            + (f" (found: {', '.join(have)})" if have else "")
            + ". Name the JSON instances_<split>.json or pass it with data.<split>_ann=FILE."
        )
    return ann, Path(image_root) if image_root else images


def resolve_splits(
    root: str | os.PathLike | None,
    splits: list[str],
    *,
    sources: dict[str, dict] | None = None,
) -> dict[str, tuple[Path, Path]]:
    """:func:`resolve_split` for each of ``splits``, skipping (with a log line) those the folder does not
    have when several are asked for; an error when none is there.

    ``sources`` maps a split to its explicit ``ann_file`` / ``image_root`` keyword arguments."""
    found: dict[str, tuple[Path, Path]] = {}
    for split in splits:
        try:
            found[split] = resolve_split(root, split, **(sources or {}).get(split, {}))
        except MissingSplitError as e:
            if len(splits) == 1:
                raise
            log.info("skipping split %s: %s", split, e)
    if not found:
        raise SegbenchError(
            f"no split of {splits} found under data.root={root}: expected "
            f"{Path(str(root)) / 'annotations' / 'instances_<split>.json'} (e.g. instances_{splits[0]}.json); "
            "name the JSON files that way or pass data.<split>_ann=FILE"
        )
    return found


def open_split(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    ann_file: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    check_files: bool = False,
) -> CocoDataset:
    """Open one split of a dataset (see :func:`resolve_split`).

    ``check_files``: refuse the split at once when an image file is missing (see :class:`CocoDataset`)."""
    ann, images = resolve_split(root, split, ann_file=ann_file, image_root=image_root)
    return CocoDataset(ann, images, check_files=check_files)
