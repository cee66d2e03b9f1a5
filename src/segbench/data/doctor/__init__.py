"""The dataset doctor: every problem of a COCO instances file and its images, with ids and a fix.

:func:`check_dataset` reads the raw JSON itself (the loader, :class:`~segbench.data.coco.CocoDataset`,
refuses some files outright and drops unusable annotations; the doctor goes on and lists them all) and
returns a :class:`CheckReport`. :func:`fix_dataset` writes a corrected copy of the JSON beside the original
(never over it) with a log of every change. :func:`check_split` does both for one split and checks the
fixed file, as ``segbench data check`` does.

The problem kinds, their severities, fix hints and what ``fix=true`` does for each are those of the
rulebook, :mod:`segbench.data.annotations` (:data:`KINDS`), which the loader uses too.

* :mod:`~segbench.data.doctor.check` — finding problems;
* :mod:`~segbench.data.doctor.fix` — repairing, writing the fixed JSON and its log;
* :mod:`~segbench.data.doctor.report` — :class:`Issue`, :class:`CheckReport`, :class:`SplitCheck`:
  text and JSON;
* :mod:`~segbench.data.doctor.split` — :func:`check_split`;
* :mod:`~segbench.data.doctor.leakage` — :func:`check_leakage`: the same file, the same pixels or a
  near-duplicate in train and in val / test (a check of all the splits at once).

Example
-------
>>> report = check_dataset("data/synth/annotations/instances_train.json")  # doctest: +SKIP
>>> print(report.format())  # doctest: +SKIP
>>> if report.errors:  # doctest: +SKIP
...     out, changes = fix_dataset(report.ann_file, report)
"""

from __future__ import annotations

from segbench.data.annotations import BOX_TOLERANCE, CROSS_SPLIT, ERROR, KINDS, LEFT_ALONE, WARNING, Kind
from segbench.data.doctor.check import check_dataset
from segbench.data.doctor.fix import FixLog, fix_dataset, fixes_log_path
from segbench.data.doctor.leakage import NEAR_DUPLICATE_DISTANCE, LeakageReport, check_leakage
from segbench.data.doctor.report import CheckReport, ImageFact, Issue, SplitCheck
from segbench.data.doctor.split import check_split

__all__ = [
    "BOX_TOLERANCE",
    "CROSS_SPLIT",
    "ERROR",
    "KINDS",
    "LEFT_ALONE",
    "NEAR_DUPLICATE_DISTANCE",
    "WARNING",
    "CheckReport",
    "FixLog",
    "ImageFact",
    "Issue",
    "Kind",
    "LeakageReport",
    "SplitCheck",
    "check_dataset",
    "check_leakage",
    "check_split",
    "fix_dataset",
    "fixes_log_path",
]
