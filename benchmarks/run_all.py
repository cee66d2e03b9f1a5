"""Run every benchmark script (each in its own process) and print one combined table of the targets.

    python benchmarks/run_all.py            # the real measurements (tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick    # every script at tiny sizes: checks that they run (a few minutes)
    python benchmarks/run_all.py --only bench_eval bench_data

Each script writes ``benchmarks/results/<name>.json``; this script reads them back. Exit status: 1 when a
script failed, or (with ``--strict``) when a target was missed; else 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent
#: fastest first
SCRIPTS = (
    "bench_eval",
    "bench_baselines",
    "bench_data",
    "bench_memory",
    "bench_predict",
    "bench_deploy",
    "bench_cpu_formats",
    "bench_roi_align",
    "bench_train",
    "bench_scaling",
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (each script's --quick)")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these scripts")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--results-dir", type=Path, default=C.RESULTS_DIR)
    args = p.parse_args(argv)
    names = [s for s in SCRIPTS if not args.only or s in args.only]

    info = C.machine_info()
    print(f"run_all{' --quick' if args.quick else ''}: {', '.join(names)}")
    C.print_machine(info)
    status = {}
    for name in names:
        out = args.results_dir / f"{name}.json"
        out.unlink(missing_ok=True)  # never report a stale result
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--results-dir", str(args.results_dir)]
        if args.quick:
            cmd.append("--quick")
        print(f"\n{'=' * 100}\n$ {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode
        status[name] = {"rc": rc, "seconds": time.perf_counter() - t0, "result": None}
        if out.is_file():
            status[name]["result"] = json.loads(out.read_text())

    print(f"\n{'=' * 100}\nSUMMARY{' (--quick: tiny sizes, the verdicts mean little)' if args.quick else ''}")
    C.print_machine(info)
    C.print_table(
        ["script", "exit", "seconds", "skipped parts"],
        [
            [
                n,
                s["rc"],
                s["seconds"],
                "; ".join(f"{k['part']}: {k['reason']}" for k in (s["result"] or {}).get("skipped", []))
                or "-",
            ]
            for n, s in status.items()
        ],
        title="scripts",
    )
    rows, missed = [], 0
    for n, s in status.items():
        res = s["result"]
        if res is None:
            rows.append([n, "(no result: the script failed)", None, "-", "ERROR"])
            continue
        for t in res.get("targets", []):
            verdict = "SKIP" if t["passed"] is None else ("PASS" if t["passed"] else "FAIL")
            missed += verdict == "FAIL"
            rows.append([n, t["name"], t["value"], C.goal_text(t), verdict])
    C.print_table(["script", "target", "measured", "goal", "verdict"], rows, title="targets")
    failed = [n for n, s in status.items() if s["rc"] != 0 or s["result"] is None]
    if failed:
        print(f"\nscripts that failed: {', '.join(failed)}")
        return 1
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
