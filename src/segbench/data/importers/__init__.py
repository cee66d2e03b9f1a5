"""Import other annotation formats as a segbench COCO dataset (``segbench data import``).

:func:`import_dataset` reads a VIA, LabelMe, YOLO-seg, CVAT XML or instance-mask export and writes
``out/images/``, ``out/annotations/instances_<split>.json`` and a log ``out/import_log.txt`` (and ``.json``)
of what was converted and what was skipped, why, and how to fix it. The rules every format follows
(splits, category ids, clipping, polygons vs RLE, ``area``, ``iscrowd``) are in
:mod:`segbench.data.importers._common`; what each format reads is in its module's docstring.

Example
-------
>>> import json, tempfile
>>> from pathlib import Path
>>> from PIL import Image
>>> src = Path(tempfile.mkdtemp())
>>> Image.new("RGB", (32, 24)).save(src / "a.png")
>>> shape = {"label": "cell", "points": [[2, 2], [12, 2], [12, 12], [2, 12]], "shape_type": "polygon"}
>>> _ = (src / "a.json").write_text(json.dumps({"shapes": [shape], "imagePath": "a.png",
...                                             "imageHeight": 24, "imageWidth": 32}))
>>> s = import_dataset("labelme", src, Path(tempfile.mkdtemp()) / "coco")
>>> s.splits, s.categories
({'train': {'images': 1, 'objects': 1, 'empty_images': 0}}, ['cell'])
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from segbench.data.importers import cvat_xml, labelme, masks, via, yolo
from segbench.data.importers._common import DatasetWriter, ImportOptions, ImportSummary, prepare_out
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

#: format name -> reader ``(src, writer, options) -> None``
IMPORTERS: dict[str, Callable[[Path, DatasetWriter, ImportOptions], None]] = {
    "via": via.read,
    "labelme": labelme.read,
    "yolo": yolo.read,
    "cvat_xml": cvat_xml.read,
    "masks": masks.read,
}

LINKS = ("copy", "hardlink", "symlink")
BOXES = ("skip", "mask")

__all__ = ["IMPORTERS", "ImportSummary", "import_dataset"]


def import_dataset(
    format: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    default_class: str = "object",
    class_key: str | None = None,
    images: str | os.PathLike | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    boxes: str = "skip",
    link: str = "copy",
    overwrite: bool = False,
) -> ImportSummary:
    """Convert an export of another tool into a segbench COCO dataset in ``out``.

    Parameters
    ----------
    format : str
        A key of :data:`IMPORTERS`: ``via``, ``labelme``, ``yolo``, ``cvat_xml`` or ``masks``.
    src : path
        The export: a file (VIA JSON, LabelMe JSON, YOLO ``data.yaml``, CVAT XML) or its folder.
    out : path
        A new (or empty) folder for the dataset; ``overwrite=True`` replaces the images/, annotations/ and
        log of an earlier import there. It may not hold ``src``.
    classes : list of str, optional
        The classes to import, in category-id order; objects of other classes are skipped and logged.
        Default: the format's declared classes (YOLO names, CVAT labels, classes.json), else every class
        found, sorted by name.
    default_class : str
        The class of objects without one (VIA regions without attributes, masks without classes.json).
    class_key : str, optional
        VIA: the region attribute holding the class (default: the first attribute with a text value).
    images : path, optional
        Where the images are when they are not where the format puts them.
    val_fraction : float
        When the source has no val split: this fraction of the images (at least one) goes to ``val``, drawn
        at random with ``seed``. 0 (the default) keeps every image in ``train`` (and says so in the log).
    boxes : str
        YOLO detection lines ``class cx cy w h``: ``skip`` (logged) or ``mask`` (imported as rectangles).
    link : str
        ``copy`` the images (the default: the dataset stands alone), ``hardlink`` or ``symlink`` them.

    Returns
    -------
    ImportSummary
        Per-split counts, the classes, skip and note counts by reason, and the log's paths.

    Raises
    ------
    SegbenchError
        For a bad option or ``out``, an index file that cannot be read (CVAT XML, YOLO data.yaml), or when
        nothing usable was found (no object imported; the log is written anyway).
    """
    if format not in IMPORTERS:
        raise SegbenchError(f"unknown import format {format!r}; the formats are {', '.join(IMPORTERS)}")
    if link not in LINKS:
        raise SegbenchError(f"link={link!r}; use one of {', '.join(LINKS)}")
    if boxes not in BOXES:
        raise SegbenchError(
            f"boxes={boxes!r}; use skip (log detection boxes) or mask (import them as rectangles)"
        )
    if not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise SegbenchError(f"val_fraction={val_fraction!r}; use a fraction in [0, 1), e.g. 0.2")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise SegbenchError(f"in={src}: no such file or folder")
    if images is not None and not Path(images).is_dir():
        raise SegbenchError(f"images={images}: no such folder")
    existed = out.exists()
    prepare_out(out, src, overwrite=overwrite)
    writer = DatasetWriter(out, src, classes=classes, default_class=default_class, link=link)
    opts = ImportOptions(
        images=Path(images) if images is not None else None, class_key=class_key, boxes=boxes
    )
    try:
        IMPORTERS[format](src, writer, opts)
        summary = writer.finish(fmt=format, val_fraction=float(val_fraction), seed=int(seed))
    except SegbenchError:
        shutil.rmtree(out / "images", ignore_errors=True)  # never leave half a dataset behind
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return summary
