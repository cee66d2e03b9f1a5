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
* a ``file_name`` is looked up once, by :func:`resolve_image_path` (the doctor uses it too): Windows
  backslashes, ``file://`` prefixes, names relative to the dataset folder (``images/im0.png``) or to the
  JSON's folder, and absolute paths inside the dataset are found; an absolute path outside the dataset,
  or ``..`` leaving the image folder, is refused with the fix;
* categories that no annotation uses keep their ids but are no classes (``keep_empty_classes``), and a
  category that only names the dataset (Roboflow's category 0) never is one;
* the folder ``data.root`` may be laid out as segbench, Roboflow, CVAT or Label Studio export it
  (:mod:`segbench.data.layouts`, used by :func:`resolve_split`).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

from segbench.data.annotations import (
    KINDS,
    check_annotation,
    class_category_ids,
    decode_annotation,
    document_problem,
    placeholder_category_ids,
    reference_problem,
)
from segbench.data.layouts import FoundLayout, canonical_split, detect_layout, unknown_layout_message
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


# --------------------------------------------------------------------------------------------------
# Where a file_name points
# --------------------------------------------------------------------------------------------------
def normalise_file_name(file_name: str) -> str:
    """A ``file_name`` with the exporters' habits undone: a ``file://`` prefix (URL-decoded), Windows
    backslashes, a leading ``./``.

    >>> normalise_file_name("sub\\\\im0.png"), normalise_file_name("file:///data/my%20set/a.png")
    ('sub/im0.png', '/data/my set/a.png')
    >>> normalise_file_name("file:///C:/Users/me/a.png"), normalise_file_name("./images/a.png")
    ('C:/Users/me/a.png', 'images/a.png')
    """
    n = file_name.strip()
    if n.lower().startswith("file://"):
        n = unquote(n[len("file://") :])
        if re.match(r"/[A-Za-z]:[/\\]", n):  # file:///C:/...
            n = n[1:]
    n = n.replace("\\", "/")
    while n.startswith("./"):
        n = n[2:]
    return n


def _is_absolute(name: str) -> bool:
    return name.startswith("/") or bool(re.match(r"[A-Za-z]:/", name))


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` lies in ``folder`` (paths made absolute and normalised; links are not followed)."""
    p, f = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder))
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _dataset_folders(image_root: Path, ann_dir: Path | None, root: Path | None) -> list[Path]:
    return [f for f in dict.fromkeys((root, image_root, ann_dir)) if f is not None]


def image_name_problem(
    file_name: object, image_root: Path, *, ann_dir: Path | None = None, root: Path | None = None
) -> str | None:
    """Why a ``file_name`` is refused, or None: not a string, an absolute path outside the dataset
    folders (``root``, ``image_root``, ``ann_dir``), or ``..`` that leaves the image folder.

    Judged from the name alone (nothing is read). ``..`` is accepted where it leads back into the image
    folder (``../images/a.png`` written relative to an ``annotations/`` folder).

    >>> image_name_problem("../x.png", Path("/d/images"), ann_dir=Path("/d/annotations"))[:34]
    "file_name '../x.png' contains '..'"
    >>> image_name_problem("../images/a.png", Path("/d/images"), ann_dir=Path("/d/annotations")) is None
    True
    >>> image_name_problem("/d/images/a.png", Path("/d/images"), root=Path("/d")) is None
    True
    """
    if not isinstance(file_name, str) or not file_name.strip():
        return f"file_name must be a non-empty string, got {file_name!r}"
    n = normalise_file_name(file_name)
    folders = _dataset_folders(image_root, ann_dir, root)
    if _is_absolute(n):
        if n.startswith("/") and any(_inside(n, f) for f in folders):
            return None
        return (
            f"file_name {file_name!r} is an absolute path outside the dataset folder "
            f"({folders[0]}); COCO file names must be relative to the image folder ({image_root}). "
            "Rewrite it relative to that folder (`segbench data check fix=true` does it when a file of "
            "that name is in the image folder)."
        )
    if ".." in n.split("/"):
        bases = [image_root] + ([ann_dir] if ann_dir is not None else [])
        if any(_inside(b / n, image_root) for b in bases):
            return None
        return (
            f"file_name {file_name!r} contains '..' and would leave the image folder {image_root}; "
            "move the image inside that folder and name it relative to it."
        )
    return None


@dataclass(frozen=True)
class ImageLookup:
    """Where a ``file_name`` points (:func:`resolve_image_path`).

    ``path`` is the file found, or where it was expected (``image_root / name``) when none was found, or
    None when the name is refused (``refused`` says why). ``how`` names the rule that found it:
    ``image_root`` (COCO's meaning), ``image_folder_prefix`` (a leading image-folder name),
    ``root`` (relative to the dataset folder), ``ann_dir`` (relative to the JSON's folder),
    ``absolute`` (an absolute path inside the dataset). ``candidates``: files of the same base name
    under the image folder, when a search index was given and the name did not resolve.
    """

    file_name: str
    normalised: str
    path: Path | None
    found: bool
    how: str = ""
    refused: str | None = None
    candidates: tuple[Path, ...] = ()

    @property
    def direct(self) -> bool:
        """Found where COCO says: ``image_root / file_name`` as written."""
        return self.found and self.how == "image_root" and self.normalised == self.file_name


class BaseNameIndex:
    """The files under an image folder by base name (walked once, on first use): where the doctor looks
    for an image whose ``file_name`` does not resolve."""

    def __init__(self, image_root: str | os.PathLike) -> None:
        self.image_root = Path(image_root)
        self._exact: dict[str, list[Path]] | None = None
        self._folded: dict[str, list[Path]] = {}

    def _build(self) -> dict[str, list[Path]]:
        if self._exact is None:
            self._exact = defaultdict(list)
            for dirpath, dirnames, filenames in os.walk(self.image_root):
                dirnames.sort()
                for f in sorted(filenames):
                    self._exact[f].append(Path(dirpath) / f)
            for name, paths in self._exact.items():
                self._folded.setdefault(name.casefold(), []).extend(paths)
        return self._exact

    def find(self, base_name: str) -> tuple[Path, ...]:
        """The files named ``base_name`` (else, ignoring case) under the image folder."""
        exact = self._build().get(base_name)
        return tuple(exact) if exact else tuple(self._folded.get(base_name.casefold(), ()))


def resolve_image_path(
    file_name: str,
    image_root: str | os.PathLike,
    *,
    ann_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    index: BaseNameIndex | None = None,
) -> ImageLookup:
    """Find the image file a COCO ``file_name`` names; the one lookup of the loader and the doctor.

    The name is normalised first (:func:`normalise_file_name`: ``file://``, backslashes) and refused
    when it leaves the dataset (:func:`image_name_problem`). Then the first existing file of

    1. ``image_root / name`` (what COCO means);
    2. ``image_root / rest`` when the name starts with the image folder's own name
       (``images/im0.png`` — the CVAT / Label Studio zip habit);
    3. ``root / name`` (relative to the dataset folder);
    4. ``ann_dir / name`` (relative to the JSON's folder);

    or, for an absolute name inside the dataset, that file. Nothing found: ``path`` is ``image_root /
    name`` and, with ``index``, ``candidates`` lists the files of its base name under the image folder.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "images").mkdir(); _ = (d / "images" / "a.png").write_bytes(b"")
    >>> look = resolve_image_path("images\\\\a.png", d / "images", root=d)
    >>> look.found, look.how, look.path == d / "images" / "a.png"
    (True, 'image_folder_prefix', True)
    >>> resolve_image_path("/etc/passwd", d / "images", root=d).refused[:40]
    "file_name '/etc/passwd' is an absolute p"
    """
    image_root = Path(image_root)
    ann_dir = Path(ann_dir) if ann_dir is not None else None
    root = Path(root) if root is not None else None
    problem = image_name_problem(file_name, image_root, ann_dir=ann_dir, root=root)
    n = normalise_file_name(file_name) if isinstance(file_name, str) else ""
    base = n.rsplit("/", 1)[-1]
    cands = index.find(base) if index is not None and base not in ("", ".", "..") else ()
    if problem is not None:
        return ImageLookup(str(file_name), n, None, False, refused=problem, candidates=cands)
    tries: list[tuple[str, Path]] = []
    if _is_absolute(n):
        tries.append(("absolute", Path(n)))
    else:
        tries.append(("image_root", image_root / n))
        head, _, rest = n.partition("/")
        if rest and head == image_root.name:
            tries.append(("image_folder_prefix", image_root / rest))
        if root is not None:
            tries.append(("root", root / n))
        if ann_dir is not None:
            tries.append(("ann_dir", ann_dir / n))
    seen: set[str] = set()
    for how, path in tries:
        key = os.path.normpath(path)
        if key in seen:
            continue
        seen.add(key)
        if path.is_file():
            return ImageLookup(file_name, n, Path(key) if ".." in n.split("/") else path, True, how)
    return ImageLookup(file_name, n, tries[0][1], False, candidates=cands)


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


def default_root(ann_file: str | os.PathLike) -> Path:
    """The dataset folder of a JSON: the parent of an ``annotations/`` folder, else the JSON's folder."""
    parent = Path(ann_file).parent
    return parent.parent if parent.name == "annotations" else parent


class CocoDataset:
    """A COCO instance-segmentation dataset: a JSON file plus a folder of images.

    Parameters
    ----------
    ann_file : path
        The COCO instances JSON.
    image_root : path, optional
        The folder that ``file_name`` entries are relative to. Default: ``<ann_file>/../../images`` when
        the JSON sits in an ``annotations/`` folder (the ``data.root`` layout), else the JSON's folder.
    root : path, optional
        The dataset folder (``data.root``): file names relative to it, and absolute paths inside it, are
        found too (see :func:`resolve_image_path`). Default: :func:`default_root`.
    check_files : bool
        Refuse the dataset at once when an image file is missing (cheap: ``stat`` only).
    keep_empty_classes : bool
        Train categories that no annotation uses as classes too. Default False: they keep their id
        (``all_categories``) but are no label, with a log line. A category that only names the dataset
        (the supercategory of all the others, no annotation: Roboflow's category 0) is never a class.
    classes : list of dict, optional
        Use these classes (the training split's ``categories``) instead of deciding from this split's
        own annotations; see :meth:`use_classes`. ``classes_source`` names them in messages.

    Indexing decodes nothing; ``dataset[i]`` reads image ``i`` and decodes its masks.

    Attributes
    ----------
    categories : list of dict
        The categories that are classes, sorted by id (see :meth:`use_classes`).
    all_categories : list of dict
        Every category of the JSON, sorted by id.
    empty_categories : list of dict
        Categories that are not classes because no annotation uses them.
    cat_id_to_label, label_to_cat_id : dict
        COCO category id <-> contiguous label ``1..K`` (of the classes).
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
        root: str | os.PathLike | None = None,
        check_files: bool = False,
        keep_empty_classes: bool = False,
        classes: Sequence[dict] | None = None,
        classes_source: str | os.PathLike = "the training split",
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root) if image_root is not None else default_image_root(self.ann_file)
        self.root = Path(root) if root is not None else default_root(self.ann_file)
        self.keep_empty_classes = bool(keep_empty_classes)
        data = read_coco_json(self.ann_file)
        self._index(data, classes=classes)
        if classes is not None:
            self.use_classes(classes, source=classes_source)
        if check_files:
            missing = [im["file_name"] for im in self.images if not self.image_path(im).is_file()]
            if missing:
                raise SegbenchError(
                    f"{len(missing)} image file(s) named in {self.ann_file} are missing from {self.image_root}: "
                    + ", ".join(missing[:5])
                    + (" ..." if len(missing) > 5 else "")
                    + ". Check data.image_root or run `segbench data check` (fix=true finds files moved "
                    "elsewhere in the image folder)."
                )

    # -- indexing ---------------------------------------------------------------------------------
    def _index(self, data: dict, *, classes: Sequence[dict] | None = None) -> None:
        src = self.ann_file
        anns = data.get("annotations", [])
        cats = []
        for c in data["categories"]:
            if not isinstance(c, dict) or "id" not in c:
                raise SegbenchError(f"{src}: every category needs an 'id', got {c!r}")
            try:
                cid = int(c["id"])
            except (TypeError, ValueError):
                raise SegbenchError(f"{src}: category ids must be integers, got {c!r}") from None
            cats.append(
                {
                    "id": cid,
                    "name": str(c.get("name", c["id"])),
                    **{k: v for k, v in c.items() if k not in ("id", "name")},
                }
            )
        ids = [c["id"] for c in cats]
        dup = [i for i, n in Counter(ids).items() if n > 1]
        if dup:
            raise SegbenchError(f"{src}: duplicate category ids {dup}; each category needs its own id")
        self.all_categories = sorted(cats, key=lambda c: c["id"])
        all_ids = {c["id"] for c in self.all_categories}

        self.images: list[dict] = []
        seen: set = set()
        ann_dir = src.parent
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
            problem = image_name_problem(im["file_name"], self.image_root, ann_dir=ann_dir, root=self.root)
            if problem is not None:
                raise SegbenchError(f"{src}: image id {im['id']}: {problem}")
            self.images.append(
                {
                    "id": im["id"],
                    "file_name": im["file_name"],
                    "height": im.get("height"),
                    "width": im.get("width"),
                }
            )
        self._pos = {im["id"]: i for i, im in enumerate(self.images)}
        self._paths: list[Path | None] = [None] * len(self.images)

        self.dropped = DropReport()
        kept: list[dict] = []
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
            problem = reference_problem(ann, self._pos, all_ids)
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
            kept.append(ann)
        self._kept = kept
        if self.dropped.total:
            log.warning(
                "%s: dropped %d annotation(s): %s (`segbench data check` says why, with the fix)",
                src.name,
                self.dropped.total,
                self.dropped.summary(),
            )

        used = {a["category_id"] for a in kept}
        placeholders = placeholder_category_ids(self.all_categories, used)
        self.empty_categories = [
            c for c in self.all_categories if c["id"] not in used and c["id"] not in placeholders
        ]
        if classes is not None:  # decided elsewhere (use_classes): nothing to say here
            self._set_classes([c["id"] for c in self.all_categories if c["id"] in used])
            return
        for c in self.all_categories:
            if c["id"] in placeholders:
                log.info(
                    "%s: category %s %r only names the dataset (no annotation; the supercategory of all the "
                    "others, Roboflow's habit): not a class",
                    src.name,
                    c["id"],
                    c["name"],
                )
        class_ids = class_category_ids(self.all_categories, used, keep_empty=self.keep_empty_classes)
        if self.empty_categories:
            names = ", ".join(f"{c['id']} {c['name']!r}" for c in self.empty_categories)
            if self.keep_empty_classes:
                log.info(
                    "%s: no annotation uses categor(ies) %s: trained as classes all the same "
                    "(data.keep_empty_classes=true)",
                    src.name,
                    names,
                )
            else:
                log.warning(
                    "%s: no annotation uses categor(ies) %s: not trained as classes (their ids are kept; "
                    "data.keep_empty_classes=true trains them)",
                    src.name,
                    names,
                )
        self._set_classes(class_ids)

    def _set_classes(self, class_ids: Sequence[int]) -> None:
        """Make the categories of ``class_ids`` (in that order) the labels ``1..K``; annotations of other
        categories are dropped as ``untrained_category``."""
        by_id = {c["id"]: c for c in self.all_categories}
        self.categories = [by_id[i] for i in class_ids]
        self.cat_id_to_label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.class_names = [c["name"] for c in self.categories]
        self.dropped.by_reason.pop("untrained_category", None)
        per_image: dict = defaultdict(list)
        for ann in self._kept:
            if ann["category_id"] in self.cat_id_to_label:
                per_image[ann["image_id"]].append(ann)
            else:
                self.dropped.add("untrained_category", ann.get("id"))
        self._anns = [per_image.get(im["id"], []) for im in self.images]
        self.num_annotations = sum(len(a) for a in self._anns)
        untrained = self.dropped.by_reason.get("untrained_category")
        if untrained:
            log.warning(
                "%s: dropped %d annotation(s) of categories that are no class of the training split "
                "(untrained_category, ids %s)",
                self.ann_file.name,
                len(untrained),
                ", ".join(map(str, untrained[:10])) + (", ..." if len(untrained) > 10 else ""),
            )

    def use_classes(
        self, categories: Sequence[dict], *, source: str | os.PathLike = "the training split"
    ) -> None:
        """Use the classes of another split (the training split's ``categories``): the same labels for
        the same category ids, so that a model trained there is scored here with the right ids.

        Annotations of categories that are no class there are dropped (``untrained_category``, logged).

        Raises
        ------
        SegbenchError
            When a class of ``categories`` is missing here or has another name.
        """
        by_id = {c["id"]: c for c in self.all_categories}
        for c in categories:
            mine = by_id.get(int(c["id"]))
            if mine is None or mine["name"] != str(c["name"]):
                here = "missing" if mine is None else f"named {mine['name']!r}"
                raise SegbenchError(
                    f"the categories of {self.ann_file} ({[x['name'] for x in self.all_categories]}) differ from "
                    f"those of {source} ({[str(x['name']) for x in categories]}): category {c['id']} "
                    f"{c['name']!r} is {here} here; both splits need the same category list"
                )
        self._set_classes([int(c["id"]) for c in categories])

    # -- access -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def image_path(self, im: dict | int) -> Path:
        """The file of image ``im`` (an index or an entry of :attr:`images`), found by
        :func:`resolve_image_path`; when it is nowhere, where COCO says it should be."""
        pos = im if isinstance(im, int) else self._pos[im["id"]]
        path = self._paths[pos]
        if path is None:
            entry = self.images[pos]
            look = resolve_image_path(
                entry["file_name"], self.image_root, ann_dir=self.ann_file.parent, root=self.root
            )
            if look.path is None:  # refused names are refused while indexing: defensive
                raise SegbenchError(f"{self.ann_file}: image id {entry['id']}: {look.refused}")
            path = self._paths[pos] = look.path
        return path

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


def _check_root(root: str | os.PathLike | None) -> Path:
    if root is None:
        raise SegbenchError("no dataset given: set data.root=DIR (or data.<split>_ann and data.image_root)")
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".json":
        raise SegbenchError(
            f"data.root={root} is a JSON file, not a folder: pass it as data.train_ann={root} (or "
            f"data.val_ann=...) with data.image_root=DIR, or set data.root to the folder that holds it"
        )
    if not root.is_dir():
        raise SegbenchError(
            f"data.root={root} is not a folder. Point data.root at a folder holding images/ and "
            "annotations/instances_<split>.json, or an export of Roboflow, CVAT or Label Studio "
            "(e.g. `segbench data synth out=data/synth`)."
        )
    return root


def _detect(root: Path) -> FoundLayout | None:
    try:
        return detect_layout(root)
    except OSError as e:
        raise SegbenchError(f"cannot list data.root={root}: {e}") from None


def _split_of_layout(
    found: FoundLayout | None, root: Path, split: str, image_root: str | os.PathLike | None
) -> tuple[Path, Path]:
    """The files of ``split`` in a detected layout (logged), or a :class:`MissingSplitError`."""
    if found is None:
        raise MissingSplitError(unknown_layout_message(root, split))
    want = canonical_split(split) or split
    src = found.splits.get(want)
    if src is None:
        raise MissingSplitError(found.missing_split(want))
    log.info("%s", found.describe(want))
    for note in found.notes:
        log.info("data.root=%s: %s", root, note)
    return src.ann_file, Path(image_root) if image_root else src.image_root


def resolve_split(
    root: str | os.PathLike | None,
    split: str,
    *,
    ann_file: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """``(annotation JSON, image folder)`` of one split, with a clear error when they are not there.

    An explicit JSON (``data.<split>_ann``) wins; else the layout of the folder ``root`` is recognised
    (:mod:`segbench.data.layouts`: segbench, Roboflow, CVAT, Label Studio, one JSON beside an image
    folder), and which layout, JSON and image folder the split uses is logged (INFO). Split names are
    read as the exports write them (``valid`` is ``val``). ``image_root`` (``data.image_root``) replaces
    the layout's image folder."""
    if ann_file is not None:
        ann = Path(ann_file)
        if not ann.is_file():
            raise SegbenchError(f"annotation file not found: {ann} (data.{split}_ann)")
        return ann, Path(image_root) if image_root else default_image_root(ann)
    root = _check_root(root)
    return _split_of_layout(_detect(root), root, split, image_root)


def resolve_splits(
    root: str | os.PathLike | None,
    splits: list[str],
    *,
    sources: dict[str, dict] | None = None,
) -> dict[str, tuple[Path, Path]]:
    """:func:`resolve_split` for each of ``splits``, skipping (with a log line) those the folder does not
    have when several are asked for; an error when none is there.

    ``sources`` maps a split to its explicit ``ann_file`` / ``image_root`` keyword arguments. The folder's
    layout is recognised once."""
    found: dict[str, tuple[Path, Path]] = {}
    layout: FoundLayout | None = None
    detected = False
    for split in splits:
        src = (sources or {}).get(split, {})
        try:
            if src.get("ann_file") is not None:
                found[split] = resolve_split(root, split, **src)
                continue
            if not detected:
                root = _check_root(root)
                layout, detected = _detect(root), True
            found[split] = _split_of_layout(layout, Path(root), split, src.get("image_root"))
        except MissingSplitError as e:
            if len(splits) == 1:
                raise
            log.info("skipping split %s: %s", split, e)
    if not found:
        if layout is None:
            raise SegbenchError(unknown_layout_message(root))
        raise SegbenchError(
            f"no split of {splits} found under data.root={root}: it is a {layout.layout.title} with the "
            f"split(s) {sorted(layout.splits) or 'none'}"
            + "".join(f"; note: {n}" for n in layout.notes)
            + ". Ask for those (splits=[...]) or pass data.<split>_ann=FILE"
        )
    return found


def open_split(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    ann_file: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    check_files: bool = False,
    keep_empty_classes: bool = False,
    classes: Sequence[dict] | None = None,
    classes_source: str | os.PathLike = "the training split",
) -> CocoDataset:
    """Open one split of a dataset (see :func:`resolve_split`).

    ``check_files``: refuse the split at once when an image file is missing; ``keep_empty_classes``,
    ``classes``: see :class:`CocoDataset`."""
    ann, images = resolve_split(root, split, ann_file=ann_file, image_root=image_root)
    return CocoDataset(
        ann,
        images,
        root=root,
        check_files=check_files,
        keep_empty_classes=keep_empty_classes,
        classes=classes,
        classes_source=classes_source,
    )


def split_class_categories(ann_file: str | os.PathLike, *, keep_empty_classes: bool = False) -> list[dict]:
    """The categories a split's JSON trains as classes (as :attr:`CocoDataset.categories`), read from
    the JSON alone: its categories and which of them the annotations use (no image is opened, and
    annotations are not checked: use it for the training split of a dataset that is not opened)."""
    data = read_coco_json(ann_file)
    cats = sorted(
        (
            {
                "id": int(c["id"]),
                "name": str(c.get("name", c["id"])),
                **{k: v for k, v in c.items() if k not in ("id", "name")},
            }
            for c in data["categories"]
            if isinstance(c, dict) and isinstance(c.get("id"), int)
        ),
        key=lambda c: c["id"],
    )
    used = {a.get("category_id") for a in data.get("annotations", []) if isinstance(a, dict)}
    ids = set(class_category_ids(cats, used, keep_empty=keep_empty_classes))
    return [c for c in cats if c["id"] in ids]
