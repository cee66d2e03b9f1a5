"""What the doctor found: :class:`Issue` (one problem, where it is) and :class:`CheckReport` (all of one
file), with their text and JSON forms."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segbench.data.annotations import ERROR, KINDS, LEFT_ALONE, WARNING, Problem


@dataclass(frozen=True)
class Issue:
    """One problem: its kind (see :data:`~segbench.data.annotations.KINDS`), severity, a sentence, and
    where it is.

    >>> Issue("unknown_image", "error", "image_id 99 is not in 'images'", image_id=99, ann_id=3).where()
    'image 99 ann 3'
    """

    kind: str
    severity: str
    message: str
    image_id: Any = None
    ann_id: Any = None
    file_name: str | None = None

    @property
    def hint(self) -> str:
        return KINDS[self.kind].hint

    def where(self) -> str:
        parts = []
        if self.image_id is not None:
            parts.append(f"image {self.image_id}")
        if self.file_name is not None:
            parts.append(repr(self.file_name))
        if self.ann_id is not None:
            parts.append(f"ann {self.ann_id}")
        return " ".join(parts)

    @classmethod
    def of(cls, problem: Problem, *, image_id=None, ann_id=None, file_name=None) -> Issue:
        """The issue of a rulebook :class:`~segbench.data.annotations.Problem` found at a place."""
        return cls(problem.kind, problem.severity, problem.message, image_id, ann_id, file_name)


@dataclass
class ImageFact:
    """What the check learned about ``images[index]`` (used by :func:`~segbench.data.doctor.fix_dataset`)."""

    index: int
    image_id: Any = None
    file_name: Any = None
    status: str = "ok"  # ok | malformed | unsafe | missing | unreadable
    actual_hw: tuple[int, int] | None = None  # (H, W) of the file after EXIF orientation
    size_ok: bool = True  # the JSON's width/height match the file (or cannot be compared)
    rename_to: str | None = None  # the file_name fix=true writes (relative to the image folder)
    rename_why: str = ""  # why, for the fixes log
    recovered: bool = False  # missing or unsafe, but its file was found: fix=true rewrites file_name
    path: Path | None = None  # the file read (None: not found or refused)
    fingerprint: Any = None  # leakage.Fingerprint, when the check took one


@dataclass
class CheckReport:
    """Everything :func:`~segbench.data.doctor.check_dataset` found in one COCO file.

    Examples
    --------
    >>> rep = CheckReport(Path("instances_train.json"), Path("images"), num_images=1)
    >>> rep.add("missing_image", "not found: images/a.png", image_id=1, file_name="a.png")
    >>> rep.errors, rep.warnings, rep.fixable
    (1, 0, 1)
    >>> print(rep.format())  # doctest: +NORMALIZE_WHITESPACE
    instances_train.json (images in images)
      1 images, 0 annotations, 0 categories: 1 error(s), 0 warning(s)
      ERROR   missing_image (1): image file not found
              fix: copy the file into the image folder or point data.image_root at the right folder
              (fix=true rewrites file_name when one file of its base name is in the image folder, else
              drops the image and its annotations)
              - image 1 'a.png': not found: images/a.png
    """

    ann_file: Path
    image_root: Path
    issues: list[Issue] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    sha256: str = ""
    image_facts: list[ImageFact] = field(default_factory=list, repr=False)
    root: Path | None = None  # the dataset folder file names may be relative to
    fingerprint_seconds: float = 0.0  # spent hashing images for the leakage check

    def add(self, kind: str, message: str, *, image_id=None, ann_id=None, file_name=None) -> None:
        self.issues.append(Issue(kind, KINDS[kind].severity, message, image_id, ann_id, file_name))

    @property
    def errors(self) -> int:
        return sum(i.severity == ERROR for i in self.issues)

    @property
    def warnings(self) -> int:
        return sum(i.severity == WARNING for i in self.issues)

    @property
    def fixable(self) -> int:
        """How many issues :func:`~segbench.data.doctor.fix_dataset` would change something for."""
        return sum(i.kind not in LEFT_ALONE for i in self.issues)

    def by_kind(self) -> dict[str, list[Issue]]:
        """Issues grouped by kind: errors first, then warnings, each in the order of :data:`KINDS`."""
        groups: dict[str, list[Issue]] = defaultdict(list)
        for i in self.issues:
            groups[i.kind].append(i)
        order = list(KINDS)
        keys = sorted(groups, key=lambda k: (KINDS[k].severity != ERROR, order.index(k)))
        return {k: groups[k] for k in keys}

    def format(self, *, title: str | None = None, max_examples: int = 5) -> str:
        """Human-readable: a summary line, then per kind its count, fix hint and a few examples."""
        head = f"[{title}] " if title else ""
        lines = [
            f"{head}{self.ann_file} (images in {self.image_root})",
            f"  {self.num_images} images, {self.num_annotations} annotations, {self.num_categories} categories: "
            f"{self.errors} error(s), {self.warnings} warning(s)",
        ]
        if not self.issues:
            lines.append("  no problems found")
        for kind, issues in self.by_kind().items():
            k = KINDS[kind]
            lines.append(f"  {k.severity.upper():7} {kind} ({len(issues)}): {k.title}")
            lines.append(f"          fix: {k.hint}")
            for i in issues[:max_examples]:
                where = i.where()
                lines.append(f"          - {where + ': ' if where else ''}{i.message}")
            if len(issues) > max_examples:
                lines.append(f"          ... and {len(issues) - max_examples} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-serialisable summary: counts, per-kind totals with hints, every issue."""
        return {
            "ann_file": str(self.ann_file),
            "image_root": str(self.image_root),
            "images": self.num_images,
            "annotations": self.num_annotations,
            "categories": self.num_categories,
            "errors": self.errors,
            "warnings": self.warnings,
            "kinds": {
                k: {"severity": KINDS[k].severity, "count": len(v), "hint": KINDS[k].hint}
                for k, v in self.by_kind().items()
            },
            "issues": [asdict(i) for i in self.issues],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)


@dataclass
class SplitCheck:
    """One split's visit to the doctor (:func:`~segbench.data.doctor.check_split`): the check, and when
    a fix was asked for, what it changed and the check of the fixed file."""

    report: CheckReport
    fix: bool = False  # a fix was asked for
    fixed_file: Path | None = None  # None: not asked, or nothing to change
    log_file: Path | None = None
    changes: list[str] = field(default_factory=list)
    fixed_report: CheckReport | None = None

    @property
    def final(self) -> CheckReport:
        """The report that counts: of the fixed file when one was written, else of the original."""
        return self.fixed_report if self.fixed_report is not None else self.report

    @property
    def errors(self) -> int:
        return self.final.errors

    @property
    def warnings(self) -> int:
        return self.final.warnings

    def format(self, *, title: str, max_examples: int = 5) -> str:
        """The check, the fix line and the check of the fixed file, as ``segbench data check`` prints them."""
        lines = [self.report.format(title=title, max_examples=max_examples)]
        if self.fixed_report is not None:
            lines.append(
                f"\n[{title}] fix: {len(self.changes)} change(s) -> {self.fixed_file} (log: {self.log_file})"
            )
            if hasattr(self.changes, "summary"):
                lines.append(f"[{title}] fix: {self.changes.summary()}")
            lines.append(self.fixed_report.format(title=f"{title} fixed", max_examples=max_examples))
        elif self.fix:
            lines.append(f"\n[{title}] fix: nothing to change ({self.report.ann_file} is left as it is)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """``{"check": ...}``, plus ``"fixed"``, ``"changes"`` and ``"fix_summary"`` (images recovered,
        renamed, dropped; annotations dropped) when a fixed file was written."""
        out: dict = {"check": self.report.to_dict()}
        if self.fixed_report is not None:
            out.update(fixed=self.fixed_report.to_dict(), changes=list(self.changes))
            if hasattr(self.changes, "summary"):
                c = self.changes
                out["fix_summary"] = {
                    "recovered_images": c.recovered,
                    "renamed_images": c.renamed,
                    "dropped_images": c.dropped_images,
                    "dropped_annotations": c.dropped_annotations,
                }
        return out
