"""Dataset folder layouts: which COCO JSON and which image folder each split of ``data.root`` uses.

Labelling tools lay a COCO dataset out each in their own way. :func:`detect_layout` recognises them from
the names of files and folders alone (no JSON is read) and says, per split, which JSON and which image
folder it uses. The first row of :data:`LAYOUTS` that matches wins:

============ ============================================ =================================================
layout       recognised by                                splits
============ ============================================ =================================================
segbench     ``annotations/instances_<split>.json``        one per JSON; images in ``images/<split>/``,
             (COCO's own ``instances_train2017.json``,     ``images/`` or ``<split>/``, the first that exists
             CVAT projects exported with subsets)
roboflow     ``<split>/_annotations.coco.json``            one per folder (``train/ valid/ test/``); images
                                                          beside the JSON
cvat         ``annotations/instances_default.json``        ``train`` only (CVAT's "COCO 1.0" export of a
                                                          task without subsets); images in
                                                          ``images/default/`` or ``images/``
label_studio ``result.json``                               ``train`` only; images in ``images/`` (their
                                                          ``file_name`` ``images/...`` is relative to the
                                                          root, which the image lookup accepts)
single_json  ``*.json`` in the root or in ``annotations/`` a JSON whose name holds a split word
             (detectron2's ``register_coco_instances``    (``train``, ``val``, ``valid``...) is that split; a
             habit: any JSON beside an image folder)       lone JSON is ``train``; images in ``images/`` or
                                                          beside the JSON
============ ============================================ =================================================

Split names are read case-insensitively with trailing digits ignored: ``training`` is ``train``;
``valid``, ``validation`` are ``val``; ``testing`` is ``test`` (:func:`canonical_split`). Other names
(``holdout``) are splits of their own name. Fixed copies written by the doctor (``*.fixed.json``) are
never picked up: pass one with ``data.<split>_ann=FILE``.

Exports that hold one split (cvat, label_studio, a lone JSON) give ``train`` only: a command that needs
``val`` (``segbench train``, ``eval``) then stops with a message that says how to give one
(``data.val_ann=FILE``); nothing is split off silently.

>>> ls = Listing(dirs=frozenset({"train", "valid"}),
...              jsons=frozenset({"train/_annotations.coco.json", "valid/_annotations.coco.json"}))
>>> layout, entries, notes = match_layout(ls)
>>> layout.name, [(e.split, e.name, e.ann_file, e.image_root) for e in entries]
('roboflow', [('train', 'train', 'train/_annotations.coco.json', 'train'), ('val', 'valid', 'valid/_annotations.coco.json', 'valid')])
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: split names as exporters write them (lower case, without trailing digits) -> segbench's split names
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


def canonical_split(name: str) -> str | None:
    """segbench's name of a split an exporter calls ``name``; None when it names no known split.

    >>> canonical_split("valid"), canonical_split("Validation"), canonical_split("train2017")
    ('val', 'val', 'train')
    >>> canonical_split("default") is None
    True
    """
    return SPLIT_ALIASES.get(re.sub(r"\d+$", "", name.strip().lower()))


def split_of_stem(stem: str) -> str | None:
    """The one split a file name speaks of (a word of it, split at ``_ - .`` and spaces), else None.

    >>> split_of_stem("instances_train2017"), split_of_stem("my-dataset_valid"), split_of_stem("coco")
    ('train', 'val', None)
    >>> split_of_stem("train_val") is None  # two splits named: not one of them
    True
    """
    found = {canonical_split(w) for w in re.split(r"[_\-.\s]+", stem)} - {None}
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------------------------------
# What a folder holds
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listing:
    """What the layouts look at in a dataset folder, as POSIX paths relative to it.

    Attributes
    ----------
    dirs : frozenset of str
        Sub-folders, two levels deep (``images``, ``images/train``).
    jsons : frozenset of str
        JSON files, two levels deep (``result.json``, ``annotations/instances_val.json``).
    images_here : bool
        Image files lie in the folder itself.
    top : tuple of str
        The folder's own entries (folders end with ``/``), for messages.
    """

    dirs: frozenset[str] = frozenset()
    jsons: frozenset[str] = frozenset()
    images_here: bool = False
    top: tuple[str, ...] = ()

    @classmethod
    def of(cls, root: str | os.PathLike) -> Listing:
        """Scan ``root`` (two levels; image folders are iterated once, nothing is opened)."""
        dirs, jsons, top = set(), set(), []
        images_here = False
        with os.scandir(root) as it:
            first = sorted(it, key=lambda e: e.name)
        for e in first:
            if e.is_dir():
                dirs.add(e.name)
                top.append(e.name + "/")
                try:
                    with os.scandir(e.path) as it2:
                        for e2 in it2:
                            if e2.name.lower().endswith(".json") and e2.is_file():
                                jsons.add(f"{e.name}/{e2.name}")
                            elif e2.is_dir():
                                dirs.add(f"{e.name}/{e2.name}")
                except OSError:  # unreadable sub-folder: not part of any layout
                    continue
            else:
                top.append(e.name)
                if e.name.lower().endswith(".json"):
                    jsons.add(e.name)
                elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                    images_here = True
        return cls(frozenset(dirs), frozenset(jsons), images_here, tuple(top))

    def first_dir(self, *candidates: str) -> str | None:
        """The first of ``candidates`` that is a sub-folder."""
        return next((c for c in candidates if c in self.dirs), None)

    def summary(self, limit: int = 8) -> str:
        """``'images/, notes.txt'`` (the first entries) or ``'the folder is empty'``."""
        if not self.top:
            return "the folder is empty"
        more = f", ... ({len(self.top)} entries)" if len(self.top) > limit else ""
        return "it holds " + ", ".join(self.top[:limit]) + more


# --------------------------------------------------------------------------------------------------
# The layouts
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One split of a layout, paths relative to the dataset folder (``""``: the folder itself)."""

    split: str  # segbench's name: train, val, test, or the export's own name
    name: str  # the export's name for it ('valid', 'default', 'result')
    ann_file: str
    image_root: str


Finder = Callable[[Listing], "tuple[list[Entry], list[str]] | None"]


def _is_fixed(path: str) -> bool:
    return path.lower().endswith(".fixed.json")


def _find_segbench(ls: Listing) -> tuple[list[Entry], list[str]] | None:
    entries = []
    for j in sorted(ls.jsons):
        m = re.fullmatch(r"annotations/instances_(.+)\.json", j)
        if not m or _is_fixed(j):
            continue
        name = m.group(1)
        images = ls.first_dir(f"images/{name}", "images", name) or "images"
        entries.append(Entry(canonical_split(name) or name, name, j, images))
    if not any(canonical_split(e.name) for e in entries):
        return None
    return entries, []


def _find_roboflow(ls: Listing) -> tuple[list[Entry], list[str]] | None:
    entries = []
    for j in sorted(ls.jsons):
        m = re.fullmatch(r"([^/]+)/_annotations\.coco\.json", j)
        if m:
            entries.append(Entry(canonical_split(m.group(1)) or m.group(1), m.group(1), j, m.group(1)))
    return (entries, []) if entries else None


def _find_cvat(ls: Listing) -> tuple[list[Entry], list[str]] | None:
    j = "annotations/instances_default.json"
    if j not in ls.jsons:
        return None
    return [Entry("train", "default", j, ls.first_dir("images/default", "images") or "images")], []


def _find_label_studio(ls: Listing) -> tuple[list[Entry], list[str]] | None:
    if "result.json" not in ls.jsons:
        return None
    return [Entry("train", "result", "result.json", ls.first_dir("images") or "")], []


def _find_single_json(ls: Listing) -> tuple[list[Entry], list[str]] | None:
    found = sorted(j for j in ls.jsons if (j.count("/") == 0 or j.startswith("annotations/")))
    fixed = [j for j in found if _is_fixed(j)]
    found = [j for j in found if not _is_fixed(j)]
    if not found:
        return None
    notes = [f"{j} is a fixed copy: pass it with data.<split>_ann=FILE to use it" for j in fixed]
    images = ls.first_dir("images") or ""
    named = [(split_of_stem(Path(j).name[: -len(".json")]), j) for j in found]
    entries = [Entry(s, Path(j).name[: -len(".json")], j, images) for s, j in named if s is not None]
    if entries:
        notes += [f"{j} names no split (train, val, test...): not used" for s, j in named if s is None]
        return entries, notes
    if len(found) == 1:
        return [Entry("train", Path(found[0]).name[: -len(".json")], found[0], images)], notes
    return [], notes + [
        f"several JSON files, none named after a split ({', '.join(found)}): rename them "
        "<name>_train.json / <name>_val.json, or pass data.train_ann=FILE data.val_ann=FILE"
    ]


@dataclass(frozen=True)
class Layout:
    """One way of laying out a COCO dataset (a row of :data:`LAYOUTS`)."""

    name: str
    title: str
    looks_for: str  # what it is recognised by, for messages
    find: Finder
    one_split: bool = False  # the export holds one split (read as train)
    val_hint: str = ""  # for one-split exports: how to give the val split


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "segbench",
        "segbench / COCO layout",
        "annotations/instances_<split>.json + images/",
        _find_segbench,
    ),
    Layout(
        "roboflow",
        "Roboflow COCO export",
        "<split>/_annotations.coco.json (Roboflow: train/ valid/ test/)",
        _find_roboflow,
    ),
    Layout(
        "cvat",
        "CVAT COCO 1.0 export",
        "annotations/instances_default.json + images/ (CVAT COCO 1.0)",
        _find_cvat,
        one_split=True,
        val_hint="or export the CVAT task with Train and Validation subsets (annotations/instances_<subset>.json)",
    ),
    Layout(
        "label_studio",
        "Label Studio COCO export",
        "result.json + images/ (Label Studio)",
        _find_label_studio,
        one_split=True,
        val_hint="or export a second Label Studio project (or a filtered view) for validation",
    ),
    Layout(
        "single_json",
        "COCO JSON beside an image folder",
        "*.json + images/ or the images beside it (detectron2's register_coco_instances habit)",
        _find_single_json,
        one_split=True,
        val_hint="or put a second JSON named <name>_val.json beside it",
    ),
)


def looked_for() -> str:
    """What the layouts are recognised by, as one sentence for messages."""
    return "; ".join(lay.looks_for for lay in LAYOUTS)


def match_layout(listing: Listing) -> tuple[Layout, list[Entry], list[str]] | None:
    """The first layout of :data:`LAYOUTS` that matches a folder's listing: ``(layout, entries,
    notes)``, or None. Pure: looks at names only.

    Entries name each split once (segbench's name); when two files name one split, the one named
    exactly like the split wins and the other is noted.

    >>> lay, entries, _ = match_layout(Listing(dirs=frozenset({"annotations", "images"}),
    ...                                        jsons=frozenset({"annotations/instances_default.json"})))
    >>> lay.name, entries[0].split, entries[0].image_root
    ('cvat', 'train', 'images')
    >>> match_layout(Listing(dirs=frozenset({"images"}))) is None
    True
    """
    for layout in LAYOUTS:
        got = layout.find(listing)
        if got is None:
            continue
        entries, notes = got
        by_split: dict[str, Entry] = {}
        for e in sorted(entries, key=lambda e: (e.name != e.split, e.name)):
            if e.split in by_split:
                notes = [
                    *notes,
                    f"{e.ann_file} is also split '{e.split}': not used ({by_split[e.split].ann_file} is)",
                ]
                continue
            by_split[e.split] = e
        order = {"train": 0, "val": 1, "test": 2}
        return layout, sorted(by_split.values(), key=lambda e: (order.get(e.split, 3), e.split)), notes
    return None


@dataclass(frozen=True)
class SplitSource:
    """Where one split of a dataset folder is: its JSON and its image folder."""

    split: str
    name: str  # the export's name for it
    ann_file: Path
    image_root: Path


@dataclass(frozen=True)
class FoundLayout:
    """A recognised dataset folder: its layout and, per split (segbench's names), its files."""

    layout: Layout
    root: Path
    splits: dict[str, SplitSource]
    notes: tuple[str, ...] = ()

    def describe(self, split: str) -> str:
        """One line for the log: the layout, and the JSON and image folder of ``split``."""
        s = self.splits[split]
        renamed = f" ({self.layout.title} calls it '{s.name}')" if s.name.lower() != split else ""
        return (
            f"data.root={self.root}: {self.layout.title}; split '{split}'{renamed} uses {s.ann_file}, "
            f"images in {s.image_root}"
        )

    def missing_split(self, split: str) -> str:
        """Why ``split`` is not there and how to give it."""
        have = ", ".join(
            f"'{k}' ({v.ann_file.relative_to(self.root).as_posix()})" for k, v in self.splits.items()
        )
        notes = "".join(f"; note: {n}" for n in self.notes)
        if self.layout.name == "segbench":
            want = self.root / "annotations" / f"instances_{split}.json"
            have_names = ", ".join(sorted(v.ann_file.name for v in self.splits.values()))
            return (
                f"no annotations for split '{split}': {want} does not exist (found: {have_names}){notes}. Name "
                "the JSON instances_<split>.json or pass it with data.<split>_ann=FILE."
            )
        if self.layout.one_split:
            return (
                f"no '{split}' split under data.root={self.root}: it is a {self.layout.title} holding one "
                f"split, read as {have or 'nothing'}{notes}. Give the {split} split with "
                f"data.{split}_ann=FILE (a COCO JSON whose images lie beside it, or in ../images when it "
                f"sits in an annotations/ folder), {self.layout.val_hint}."
            )
        return (
            f"no '{split}' split under data.root={self.root}: this {self.layout.title} has {have or 'none'}"
            f"{notes}. Add the split to the export, or pass data.{split}_ann=FILE (data.<split>_ann=FILE)."
        )


def detect_layout(root: str | os.PathLike) -> FoundLayout | None:
    """The layout of the dataset folder ``root`` (see the module docstring), or None when no layout
    matches. Reads the folder's names, never a JSON.

    Raises
    ------
    OSError
        When ``root`` cannot be listed.
    """
    root = Path(root)
    got = match_layout(Listing.of(root))
    if got is None:
        return None
    layout, entries, notes = got
    splits = {
        e.split: SplitSource(
            e.split, e.name, root / e.ann_file, root / e.image_root if e.image_root else root
        )
        for e in entries
    }
    return FoundLayout(layout, root, splits, tuple(notes))


def unknown_layout_message(root: str | os.PathLike, split: str | None = None) -> str:
    """The one message for a folder no layout matches: what was looked for, what is there, the fix."""
    root = Path(root)
    try:
        there = Listing.of(root).summary()
    except OSError as e:
        there = f"it cannot be listed ({e})"
    head = (
        f"no annotations for split '{split}' under data.root={root}: "
        f"{root / 'annotations' / f'instances_{split}.json'} does not exist, nor does any other layout segbench "
        "knows"
        if split
        else f"no COCO dataset found under data.root={root}"
    )
    return (
        f"{head} ({there}). Looked for: {looked_for()}. Point data.root at the folder of the export, or "
        "name the files with data.<split>_ann=FILE (and data.image_root=DIR)."
    )
