"""CPU presets from a measured curve: val segm mAP against training wall time on the synthetic default.

For every (RoI samples per image, image size) pair of the grid, ``segbench train experiment=synth_cpu`` runs
in a child process with ``trainer.max_time`` = ``--budget-min`` and the learning-rate decay fitted to that
time (``model.scheduler.by_time=true``, as the preset itself does), so every run ends annealed at the same
wall time whatever its step cost. The RPN keeps at least as many proposals per image as RoIs are sampled
(``rpn_post_nms_top_n_train = max(300, RoIs)``), so 512 means 512. The model is validated on the whole val
split after every epoch (100 steps) and when the time is up; each validation is a point (training wall time
including validation, val segm mAP), read from the run's ``metrics.json``.

The frontier is the set of points (every validation of every run) that no other point beats: none has a
higher mAP in no more time. ``--include RUN_DIR`` adds finished runs (e.g. the 14-minute ``synth_cpu`` run of
``make demo``) to the plot and the frontier, read from their ``config.yaml`` and ``metrics.json``. The table, ``benchmarks/results/bench_presets.json`` and a plot (``--plot``, default
``docs/preset_curve.png``) come out. Runs go one after the other: the CPU must be otherwise idle.

    python benchmarks/bench_presets.py                       # the grid 512/256/128 x 160/192 px, 4 min each
    python benchmarks/bench_presets.py --rois 64 --sizes 192 --budget-min 14   # the synth_cpu preset itself
    python benchmarks/bench_presets.py --quick               # seconds: checks that the script runs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as C

NAME = "bench_presets"


def overrides(data_root: Path, roi: int, size: int) -> list[str]:
    return [
        "experiment=synth_cpu",
        f"data.root={data_root}",
        f"model.net.box_batch_size_per_image={roi}",
        f"model.net.rpn_post_nms_top_n_train={max(300, roi)}",
        f"model.net.rpn_pre_nms_top_n_train={max(600, 2 * roi)}",
        f"model.net.min_size={size}",
        f"model.net.max_size={size}",
    ]


def load_run(run_dir: Path) -> dict:
    """A finished run folder as a run record (its RoIs, size and validation history)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    m = json.loads((run_dir / "metrics.json").read_text())
    hist = [
        {"epoch": h["epoch"], "step": h["step"], "wall_s": h["wall_s"], "val/segm_mAP": h["val/segm_mAP"],
         "val/bbox_mAP": h["val/bbox_mAP"]}
        for h in m["history"]
    ]  # fmt: skip
    return {
        "roi": int(cfg.model.net.box_batch_size_per_image),
        "size": int(cfg.model.net.min_size),
        "steps": m["global_step"],
        "s_per_step": hist[-1]["wall_s"] / max(m["global_step"], 1),
        "fit_wall_s": hist[-1]["wall_s"],
        "process_wall_s": None,
        "final_segm_mAP": hist[-1]["val/segm_mAP"],
        "history": hist,
        "run_dir": str(run_dir),
    }


def frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (time, mAP) that no other point beats (higher mAP in no more time)."""
    keep = []
    for i, (t, m) in enumerate(points):
        if not any(
            (t2 <= t and m2 > m) or (t2 < t and m2 >= m) for j, (t2, m2) in enumerate(points) if j != i
        ):
            keep.append(i)
    return keep


def plot(runs: list[dict], front_points: list, path: Path, budget_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for r in runs:
        xs = [0.0] + [h["wall_s"] / 60 for h in r["history"]]
        ys = [0.0] + [h["val/segm_mAP"] for h in r["history"]]
        style = "-" if r["size"] == max(x["size"] for x in runs) else "--"
        if r.get("process_wall_s") is None:  # an included run (--include), e.g. the preset itself
            style = ":"
        ax.plot(
            xs, ys, style, marker="o", ms=3.5, label=f"RoI {r['roi']}, {r['size']} px ({r['steps']} steps)"
        )
    fp = sorted((t / 60, m) for t, m, _ in front_points)
    ax.step([0.0] + [t for t, _ in fp], [0.0] + [m for _, m in fp], "k-", where="post", lw=0.8, alpha=0.6)
    ax.plot([t for t, _ in fp], [m for _, m in fp], "k*", ms=10, zorder=5, label="frontier")
    ax.set_xlabel("training wall time, minutes (validation included)")
    ax.set_ylabel("val segm mAP")
    ax.set_title(
        f"synth_cpu from scratch, {budget_min:g} min budget per run (★ = frontier points)", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--rois", type=int, nargs="+", default=None, help="RoI samples per image (512 256 128)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes (160 192)")
    p.add_argument("--budget-min", type=float, default=None, help="training minutes per run (default 4)")
    p.add_argument("--data", type=Path, default=C.ROOT / "data" / "synth", help="synthetic dataset root")
    p.add_argument("--out", type=Path, default=C.ROOT / "outputs" / "presets", help="run folders")
    p.add_argument("--plot", type=Path, default=C.ROOT / "docs" / "preset_curve.png")
    p.add_argument("--include", type=Path, nargs="*", default=[], help="finished synth run folders to add")
    args = p.parse_args(argv)
    q = args.quick
    rois = args.rois or ([64] if q else [512, 256, 128])
    sizes = args.sizes or ([96] if q else [160, 192])
    budget_s = round((args.budget_min or (0.25 if q else 4.0)) * 60)
    C.quiet_logs()
    info = C.machine_info()
    C.print_machine(info)

    data = args.data.resolve()
    if not (data / "annotations" / "instances_train.json").is_file():
        print(f"writing the synthetic dataset to {data}", flush=True)
        from segbench.data.synthetic import generate

        generate(data, **({"num_train": 16, "num_val": 8, "image_size": 96} if q else {}))

    runs = []
    for size in sizes:
        for roi in rois:
            name = f"r{roi}_s{size}"
            cmd = [
                sys.executable, "-m", "segbench.cli", "train",
                *overrides(data, roi, size),
                f"name=presets/{name}",
                f"paths.output_dir={args.out}",
                "trainer.max_epochs=1000",
                f"trainer.max_time=00:00:{budget_s // 60:02d}:{budget_s % 60:02d}",
                "model.scheduler.by_time=true",
                "trainer.check_val_every_n_epoch=1",
                "test_after_fit=false",
                "trainer.enable_progress_bar=false",
            ]  # fmt: skip
            print(f"\n[{name}] training for {budget_s} s", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                raise SystemExit(f"[{name}] training failed (exit {proc.returncode})")
            run_dir = sorted((args.out / "train" / "presets" / name).iterdir())[-1]
            run = {**load_run(run_dir), "process_wall_s": wall}
            runs.append(run)
            print(
                f"[{name}] {run['steps']} steps: "
                + ", ".join(f"{h['wall_s'] / 60:.1f} min {h['val/segm_mAP']:.3f}" for h in run["history"]),
                flush=True,
            )

    for run_dir in args.include:
        runs.append(load_run(run_dir))
    points = [(h["wall_s"], h["val/segm_mAP"], i) for i, r in enumerate(runs) for h in r["history"]]
    front_points = [points[k] for k in frontier([(t, m) for t, m, _ in points])]
    front = sorted({i for _, _, i in front_points})
    rows = [
        [
            r["roi"],
            r["size"],
            r["steps"],
            f"{r['s_per_step']:.2f}",
            f"{r['fit_wall_s'] / 60:.1f}",
            f"{r['final_segm_mAP']:.3f}",
            "yes" if i in front else "",
        ]
        for i, r in enumerate(runs)
    ]
    print(f"\nval segm mAP after {budget_s / 60:g} minutes of training per run (synth_cpu, from scratch)")
    C.print_table(["RoI/img", "size px", "steps", "s/step", "wall min", "segm mAP", "frontier"], rows)
    if not q or args.plot != p.get_default("plot"):
        plot(runs, front_points, args.plot, budget_s / 60)
        print(f"plot: {args.plot}")
    C.write_result(
        args.results_dir,
        NAME,
        {
            "settings": {"budget_s": budget_s, "rois": rois, "sizes": sizes},
            "runs": runs,
            "frontier_runs": front,
            "frontier_points": [{"wall_s": t, "segm_mAP": m, "run": i} for t, m, i in front_points],
            "targets": [],
            "skipped": [],
        },
        quick=q,
        machine=info,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
