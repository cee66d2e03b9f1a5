"""Tables for the terminal and for files: the metrics of one method, the leaderboard, the bootstrap.

Presentation only: every number comes from :mod:`segbench.eval`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from segbench.eval.metrics import IOU_TYPES

#: The leaderboard's columns: (key, header, description). Segm AP columns are class-agnostic.
LEADERBOARD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("AP", "segm AP", "class-agnostic COCO mask AP, IoU 0.50:0.95"),
    ("AP50", "AP50", "class-agnostic mask AP at IoU 0.50"),
    ("AP75", "AP75", "class-agnostic mask AP at IoU 0.75"),
    ("APs", "AP small", "class-agnostic mask AP, objects < 32x32 px"),
    ("APm", "AP medium", "class-agnostic mask AP, objects 32x32 to 96x96 px"),
    ("APl", "AP large", "class-agnostic mask AP, objects > 96x96 px"),
    (
        "boundary_AP",
        "boundary AP",
        "class-agnostic Boundary IoU AP, IoU 0.50:0.95: low where masks are right in place but wrong at the edges",
    ),
    ("AP_class_aware", "segm AP (classes)", "class-aware COCO mask AP (the model only)"),
    ("f1", "F1@0.5", "F1 of one-to-one matching at mask IoU 0.5"),
    ("pq", "PQ", "panoptic quality (class-agnostic) at IoU 0.5"),
    ("fg_iou", "fg IoU", "IoU of the union of predicted and of true masks"),
    ("fg_dice", "Dice", "Dice of the union of predicted and of true masks"),
    ("ms_per_image", "ms/image", "prediction time per image (milliseconds, after one warm-up image)"),
)

_EXTRA_CSV = ("precision", "recall", "num_pred", "score_threshold")


def leaderboard_csv(rows: list[dict]) -> str:
    """The leaderboard as CSV: ``method, kind``, the :data:`LEADERBOARD_COLUMNS` keys, precision, recall,
    detections, score threshold, then ``AP[<class>]`` per class (the model's class-aware per-class AP)."""
    classes: list[str] = []
    for r in rows:
        for c in r.get("per_class_AP") or {}:
            if c not in classes:
                classes.append(c)
    header = [
        "method",
        "kind",
        *(k for k, _, _ in LEADERBOARD_COLUMNS),
        *_EXTRA_CSV,
        *(f"AP[{c}]" for c in classes),
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        pc = r.get("per_class_AP") or {}
        vals = [r.get(k) for k in header[2 : 2 + len(LEADERBOARD_COLUMNS) + len(_EXTRA_CSV)]]
        vals += [pc.get(c) for c in classes]
        w.writerow([r["method"], r["kind"], *("" if v is None else v for v in vals)])
    return buf.getvalue()


def format_leaderboard(rows: Sequence[dict]) -> str:
    """The leaderboard as plain text (for the terminal)."""

    def f(v, key):
        if v is None:
            return "-"
        return f"{v:.1f}" if key == "ms_per_image" else f"{v:.4f}"

    cols = [(k, h) for k, h, _ in LEADERBOARD_COLUMNS]
    if all(r.get("AP_class_aware") is None for r in rows):
        cols = [(k, h) for k, h in cols if k != "AP_class_aware"]
    width = max([len("method"), *(len(r["method"]) for r in rows)]) + 2
    lines = [f"{'method':<{width}}" + "".join(f"{h:>{max(len(h), 7) + 2}}" for _, h in cols)]
    for r in rows:
        lines.append(
            f"{r['method']:<{width}}" + "".join(f"{f(r.get(k), k):>{max(len(h), 7) + 2}}" for k, h in cols)
        )
    return "\n".join(lines)


def format_bootstrap(b: dict) -> str:
    """One line per metric: the difference and its confidence interval."""
    pct = round(100 * b["confidence"])
    lines = []
    for key, label in (("segm_agnostic_AP", "segm AP (class-agnostic)"), ("f1", "F1@0.5")):
        s = b[key]
        if s["difference"] is None or s["ci_low"] is None:
            lines.append(f"{b['a']} - {b['b']} {label}: not available")
            continue
        lines.append(
            f"{b['a']} - {b['b']} {label}: {s['difference']:+.4f} "
            f"({pct}% CI {s['ci_low']:+.4f} .. {s['ci_high']:+.4f}, {s['resamples_used']} resamples "
            f"of {b['n_images']} images)" + _mde(s)
        )
    for c, s in (b.get("per_class_AP") or {}).items():
        if s["difference"] is not None and s["ci_low"] is not None:
            lines.append(
                f"  class {c}: segm AP {s['difference']:+.4f} ({pct}% CI {s['ci_low']:+.4f} .. {s['ci_high']:+.4f})"
                + _mde(s)
            )
    return "\n".join(lines)


def _mde(s: dict) -> str:
    mde = s.get("min_detectable_difference")
    return "" if mde is None else f"; smallest difference these images can detect: {mde:.4f}"


def format_backends(b: dict) -> str:
    """``score backend=all``: class-aware AP / AP50 / AP75 per backend and cap, one row each."""
    lines = []
    for t, rows in b.items():
        if t == "notes":
            continue
        lines.append(f"{t:<8}{'AP':>9}{'AP50':>9}{'AP75':>9}")
        for name, v in rows.items():
            lines.append(
                f"  {name:<22}"
                + "".join(f"{'-' if v[k] is None else f'{v[k]:.4f}':>9}" for k in ("AP", "AP50", "AP75"))
            )
    lines += [f"note: {n}" for n in b.get("notes", [])]
    return "\n".join(lines)


def format_metrics_table(m: dict, *, iou_types: Sequence[str] = IOU_TYPES) -> str:
    """A plain-text table of the main numbers."""

    def f(v):
        return "  -  " if v is None else f"{v:.4f}"

    rows = []
    cols = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR"]
    header = f"{'':<16}" + "".join(f"{c:>8}" for c in cols)
    rows.append(header)
    for t in iou_types:
        for variant, prefix in (("", f"{t}_"), (" agnostic", f"{t}_agnostic_")):
            if f"{prefix}AP" in m:
                rows.append(f"{t + variant:<16}" + "".join(f"{f(m.get(prefix + c)):>8}" for c in cols))
    for t in iou_types:
        pc = m.get(f"per_class_{t}_AP") or {}
        if len(pc) > 1:
            rows.append(f"per-class {t} AP: " + ", ".join(f"{k}={f(v).strip()}" for k, v in pc.items()))
    if "f1" in m:
        rows.append(
            "matching @IoU0.5: precision {p} recall {r} F1 {f1} PQ {pq} | foreground IoU {iou} Dice {d}".format(
                p=f(m["precision"]),
                r=f(m["recall"]),
                f1=f(m["f1"]),
                pq=f(m["pq"]),
                iou=f(m["fg_iou"]),
                d=f(m["fg_dice"]),
            )
        )
    rows.append(
        f"images {m.get('num_images')}, objects {m.get('num_gt')}, detections {m.get('num_pred')}"
        f", max_dets {m.get('max_dets')}"
    )
    return "\n".join(rows)


def format_analysis(m: dict) -> str:
    """The error breakdown (TIDE's categories) and the confusion matrix of ``metrics["analysis"]``."""
    a = m.get("analysis")
    if not a:
        return ""
    e = a["errors"]
    kinds = ", ".join(f"{k} {v}" for k, v in e["counts"].items())
    lines = [f"errors at IoU {e['iou_threshold']} ({e['true_positives']} true positives): {kinds}"]
    cm = a["confusion"]
    names = cm["classes"]
    if len(names) > 2:  # one class: the error line says it all
        w = max(len(n) for n in names) + 2
        lines.append(
            "confusion (rows: true class, columns: predicted; background = missed / false positive):"
        )
        lines.append(" " * w + "".join(f"{n:>{w}}" for n in names))
        for n, row in zip(names, cm["counts"], strict=True):
            lines.append(f"{n:<{w}}" + "".join(f"{v:>{w}}" for v in row))
    return "\n".join(lines)
