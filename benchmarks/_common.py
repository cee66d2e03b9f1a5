"""Helpers shared by the benchmark scripts: machine description, timing, tables, results files.

Not part of the ``segbench`` package: the scripts in this folder import it by file location
(``python benchmarks/bench_x.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
#: The shared real dataset, relative to the repository root (see ../shared/data/README.md).
DSB2018 = ROOT.parent / "shared" / "data" / "dsb2018"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs (seconds)")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where <name>.json goes (default {RESULTS_DIR})",
    )
    return p


def quiet_logs() -> None:
    """Silence Lightning's banner lines and segbench's info logs (warnings still show)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "segbench"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info(*, light: bool = False) -> dict[str, Any]:
    """The machine and torch's threads. ``light``: ask torch in a subprocess, so that this process stays
    small (a child's ``ru_maxrss`` starts at its parent's peak RSS: memory benchmarks need a light parent)."""
    info: dict[str, Any] = {
        "processor": platform.processor(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    code = (
        "import json, torch; print(json.dumps({'torch': torch.__version__, 'torch_threads': "
        "torch.get_num_threads(), 'torch_interop_threads': torch.get_num_interop_threads()}))"
    )
    if light:
        import subprocess

        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        info.update(json.loads(res.stdout) if res.returncode == 0 else {"torch": None})
    else:
        try:
            import torch

            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
            info["torch_interop_threads"] = torch.get_num_interop_threads()
        except ImportError:  # pragma: no cover - torch is a dependency
            info["torch"] = None
    try:
        load = os.getloadavg()
        info["load_average_1min"] = round(load[0], 2)
    except OSError:
        pass
    return info


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: processor={info['processor']!r} ({info.get('cpu_model') or info['machine']}), "
        f"cpu_count={info['cpu_count']}, torch {info.get('torch')} with {info.get('torch_threads')} threads "
        f"(interop {info.get('torch_interop_threads')}), python {info['python']}, "
        f"load avg {info.get('load_average_1min', '?')}"
    )


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def timeit(fn: Callable[[], Any], *, reps: int, warmup: int = 1) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times; the wall times in seconds."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if len(xs) else float("nan")


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:  # nan
            return "nan"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.{digits}g}" if a < 10 else f"{v:.2f}"
        return f"{v:.{digits}g}"
    return str(v)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """Text columns left-aligned, numbers right-aligned."""
    cells = [[fmt(c) for c in r] for r in rows]
    left = [all(isinstance(r[i], str) for r in rows) if rows else True for i in range(len(headers))]
    widths = [max([len(str(h))] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def just(text: str, i: int) -> str:
        return text.ljust(widths[i]) if left[i] else text.rjust(widths[i])

    if title:
        print(f"\n{title}")
    print("  ".join(just(str(h), i) for i, h in enumerate(headers)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(just(c, i) for i, c in enumerate(r)).rstrip())


def target(
    name: str, value: float | None, goal: float, *, op: str = ">=", unit: str = "x", note: str = ""
) -> dict:
    """A target check: ``value >= goal`` (or ``<=`` with ``op="<="``); ``value`` None = not measured."""
    if op not in (">=", "<="):
        raise ValueError(f"op must be '>=' or '<=', got {op!r}")
    if value is None or value != value:
        passed = None
    else:
        passed = bool(value >= goal) if op == ">=" else bool(value <= goal)
    return {
        "name": name,
        "value": value,
        "target": goal,
        "op": op,
        "unit": unit,
        "passed": passed,
        "note": note,
    }


def goal_text(t: dict) -> str:
    return f"{t['op']} {fmt(t['target'])}{t['unit']}"


def print_targets(targets: Sequence[dict], *, quick: bool) -> None:
    if not targets:
        return
    rows = []
    for t in targets:
        verdict = "SKIP" if t["passed"] is None else ("PASS" if t["passed"] else "FAIL")
        rows.append([t["name"], t["value"], goal_text(t), verdict])
    print_table(
        ["target", "measured", "goal", "verdict"],
        rows,
        title="targets" + (" (quick mode: sizes too small to mean much)" if quick else ""),
    )


def write_result(results_dir: Path, name: str, data: dict, *, quick: bool, machine: dict) -> Path:
    """Write ``<results_dir>/<name>.json``: the envelope every script shares (name, quick, machine), then
    ``data``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    payload = {"name": name, "quick": quick, "machine": machine, **data}
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"\nwrote {path}")
    return path


def _json_default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)


def skipped(what: str, reason: str) -> dict:
    print(f"\nSKIPPED {what}: {reason}")
    return {"part": what, "reason": reason}


def status_kb(key: str) -> int | None:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``), None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def dsb2018_reason(root: Path) -> str | None:
    """Why the dsb2018 data cannot be used (None when it can)."""
    for split in ("train", "val"):
        if not (root / "annotations" / f"instances_{split}.json").is_file():
            return f"{root}/annotations/instances_{split}.json not found (the shared data is absent)"
    if not (root / "images").is_dir():
        return f"{root}/images not found"
    return None


def experiment_config(name: str, tmp: str | os.PathLike):
    """The composed ``train`` config of ``experiment=name`` (the settings the CLI would use)."""
    from segbench.cli import compose

    return compose("train", [f"experiment={name}", f"paths.output_dir={tmp}", f"data.root={tmp}"])


def header(name: str, args: argparse.Namespace, *, light: bool = False) -> dict:
    info = machine_info(light=light)
    print(f"== {name}{' (--quick)' if args.quick else ''} ==")
    print_machine(info)
    load, cpus = info.get("load_average_1min"), info.get("cpu_count") or 1
    if load is not None and load > 0.5 * cpus:
        print(
            f"WARNING: the machine is busy (1-min load average {load} on {cpus} cores): other processes "
            "compete for the cores and the timings below are unreliable; rerun on an idle machine."
        )
    sys.stdout.flush()
    return info
