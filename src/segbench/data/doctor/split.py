"""One split's visit to the doctor: check, optionally fix, and check the fixed file."""

from __future__ import annotations

import os

from segbench.data.doctor.check import check_dataset
from segbench.data.doctor.fix import fix_dataset, fixes_log_path
from segbench.data.doctor.report import SplitCheck


def check_split(
    ann_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
    fix: bool = False,
    max_dets: int | None = 100,
    read_images: bool = True,
    fingerprint: bool = False,
) -> SplitCheck:
    """Check one split; with ``fix``, write ``<stem>.fixed.json`` + ``<stem>.fixes.log`` beside it when
    there is something to change, and check that fixed file too.

    Parameters
    ----------
    ann_file : path
        The split's COCO instances JSON (never modified).
    image_root : path, optional
        Its image folder (default: as :class:`~segbench.data.coco.CocoDataset`).
    root : path, optional
        The dataset folder (``data.root``), for file names relative to it.
    fix : bool
        Repair what can be repaired (:func:`~segbench.data.doctor.fix_dataset`). Nothing is written when
        every issue is of a kind the fix leaves alone.
    max_dets, read_images, fingerprint
        As for :func:`~segbench.data.doctor.check_dataset` (``fingerprint``: for the leakage check).

    Returns
    -------
    SplitCheck
        ``errors`` / ``warnings`` count what is left: in the fixed file when one was written.
    """
    opts = {"max_dets": max_dets, "read_images": read_images, "root": root}
    report = check_dataset(ann_file, image_root, fingerprint=fingerprint, **opts)
    result = SplitCheck(report=report, fix=fix)
    if fix and report.fixable:
        out, changes = fix_dataset(ann_file, report)
        result.fixed_file, result.log_file, result.changes = out, fixes_log_path(ann_file, out), changes
        result.fixed_report = check_dataset(out, report.image_root, **opts)
    return result
