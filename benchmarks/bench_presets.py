"""CPU presets from a measured curve: val segm mAP against training wall time on the synthetic default.

For every (RoI samples per image, image size) pair of the grid, on the ``synth_cpu`` experiment:

1. **probe** the step time: ``--probe-steps`` training steps of the experiment's model on its own data loader
   (augmentation on), in this process; the median of the steps after the first 3;
2. **train** with ``segbench train experiment=synth_cpu`` in a child process, for as many steps as fit in
   ``--budget-min`` minutes at that step time (less the time the validations take), spread over ``--epochs``
   epochs (``trainer.limit_train_batches``) so that the cosine schedule ends inside the budget and the model
   is validated on the whole val split at the end of each epoch. Every validation is a point (training wall
   time including validation, val segm mAP), read from the run's ``metrics.json``.

The frontier is the set of runs whose final point is not beaten by another run's final point that took no
longer. The table, ``benchmarks/results/bench_presets.json`` and a plot (``--plot``, default
``docs/preset_curve.png``) come out. Runs go one after the other: the CPU must be otherwise idle.

    python benchmarks/bench_presets.py                       # the grid 512/256/128/64 x 160/192 px, 4 min each
    python benchmarks/bench_presets.py --rois 64 --sizes 192 --budget-min 14   # one more point
    python benchmarks/bench_presets.py --quick               # seconds: checks that the script runs
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common as C

NAME = "bench_presets"


def probe_step_seconds(data_root: Path, roi: int, size: int, steps: int) -> float:
    """Median seconds per training step of synth_cpu at this (roi, size), augmentation on."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segbench.cli import compose

    cfg = compose("train", overrides(data_root, roi, size))
    pl.seed_everything(0, verbose=False)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    ds = dm.train_coco
    module = instantiate(
        cfg.model,
        num_classes=ds.num_classes,
        class_names=ds.class_names,
        categories=ds.categories,
        label_to_cat_id=ds.label_to_cat_id,
        _convert_="all",
    )
    model = module.model.train()
    opt = module.optimizer_factory([p for p in model.parameters() if p.requires_grad])
    times = []
    t = time.perf_counter()
    for i, (images, targets) in enumerate(dm.train_dataloader()):
        if i >= steps:
            break
        targets = [{k: v for k, v in tg.items() if k != "image_id"} for tg in targets]
        loss = sum(model(list(images), targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        now = time.perf_counter()
        times.append(now - t)
        t = now
    del module, model, opt
    return statistics.median(times[3:] if len(times) > 4 else times)


def overrides(data_root: Path, roi: int, size: int) -> list[str]:
    return [
        "experiment=synth_cpu",
        f"data.root={data_root}",
        f"model.net.box_batch_size_per_image={roi}",
        f"model.net.min_size={size}",
        f"model.net.max_size={size}",
    ]


def frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (time, mAP) that no other point beats (higher mAP in no more time)."""
    keep = []
    for i, (t, m) in enumerate(points):
        if not any(
            (t2 <= t and m2 > m) or (t2 < t and m2 >= m) for j, (t2, m2) in enumerate(points) if j != i
        ):
            keep.append(i)
    return keep


def plot(runs: list[dict], front: list[int], path: Path, budget_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, r in enumerate(runs):
        xs = [0.0] + [h["wall_s"] / 60 for h in r["history"]]
        ys = [0.0] + [h["val/segm_mAP"] for h in r["history"]]
        style = "-" if r["size"] == max(x["size"] for x in runs) else "--"
        ax.plot(
            xs, ys, style, marker="o", ms=3.5, label=f"RoI {r['roi']}, {r['size']} px ({r['steps']} steps)"
        )
        if i in front:
            ax.plot(xs[-1], ys[-1], "k*", ms=12, zorder=5)
    ax.set_xlabel("training wall time, minutes (validation included)")
    ax.set_ylabel("val segm mAP")
    ax.set_title(f"synth_cpu from scratch, {budget_min:g} min budget per run (★ = frontier)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--rois", type=int, nargs="+", default=None, help="RoI samples per image (512 256 128 64)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes (160 192)")
    p.add_argument("--budget-min", type=float, default=None, help="training minutes per run (default 4)")
    p.add_argument("--epochs", type=int, default=3, help="validations per run (default 3)")
    p.add_argument("--val-seconds", type=float, default=None, help="time one validation takes (default 12)")
    p.add_argument("--probe-steps", type=int, default=None, help="steps timed by the probe (default 10)")
    p.add_argument("--data", type=Path, default=C.ROOT / "data" / "synth", help="synthetic dataset root")
    p.add_argument("--out", type=Path, default=C.ROOT / "outputs" / "presets", help="run folders")
    p.add_argument("--plot", type=Path, default=C.ROOT / "docs" / "preset_curve.png")
    args = p.parse_args(argv)
    q = args.quick
    rois = args.rois or ([64] if q else [512, 256, 128, 64])
    sizes = args.sizes or ([96] if q else [160, 192])
    budget_min = args.budget_min or (0.4 if q else 4.0)
    val_s = args.val_seconds if args.val_seconds is not None else (3.0 if q else 12.0)
    probe_steps = args.probe_steps or (4 if q else 10)
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
            step_s = probe_step_seconds(data, roi, size, probe_steps)
            train_s = budget_min * 60 - args.epochs * val_s
            steps = max(args.epochs, int(train_s / step_s))
            per_epoch = math.ceil(steps / args.epochs)
            name = f"r{roi}_s{size}"
            cmd = [
                sys.executable, "-m", "segbench.cli", "train",
                *overrides(data, roi, size),
                f"name=presets/{name}",
                f"paths.output_dir={args.out}",
                f"trainer.max_epochs={args.epochs}",
                f"trainer.limit_train_batches={per_epoch}",
                "trainer.max_time=null",
                "trainer.check_val_every_n_epoch=1",
                "test_after_fit=false",
                "trainer.enable_progress_bar=false",
            ]  # fmt: skip
            print(f"\n[{name}] probe {step_s:.2f} s/step -> {per_epoch * args.epochs} steps", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                raise SystemExit(f"[{name}] training failed (exit {proc.returncode})")
            run_dir = sorted((args.out / "train" / "presets" / name).iterdir())[-1]
            m = json.loads((run_dir / "metrics.json").read_text())
            hist = [
                {"epoch": h["epoch"], "step": h["step"], "wall_s": h["wall_s"], "val/segm_mAP": h["val/segm_mAP"],
                 "val/bbox_mAP": h["val/bbox_mAP"]}
                for h in m["history"]
            ]  # fmt: skip
            runs.append(
                {
                    "roi": roi,
                    "size": size,
                    "probe_step_s": step_s,
                    "steps": m["global_step"],
                    "fit_wall_s": hist[-1]["wall_s"],
                    "process_wall_s": wall,
                    "final_segm_mAP": hist[-1]["val/segm_mAP"],
                    "history": hist,
                    "run_dir": str(run_dir),
                }
            )
            print(
                f"[{name}] {m['global_step']} steps, {hist[-1]['wall_s'] / 60:.1f} min: "
                + ", ".join(f"{h['wall_s'] / 60:.1f} min {h['val/segm_mAP']:.3f}" for h in hist),
                flush=True,
            )

    front = frontier([(r["fit_wall_s"], r["final_segm_mAP"]) for r in runs])
    rows = [
        [
            r["roi"],
            r["size"],
            f"{r['probe_step_s']:.2f}",
            r["steps"],
            f"{r['fit_wall_s'] / 60:.1f}",
            f"{r['final_segm_mAP']:.3f}",
            "yes" if i in front else "",
        ]
        for i, r in enumerate(runs)
    ]
    print(f"\nval segm mAP after a {budget_min:g}-minute budget per run (synth_cpu, from scratch)")
    C.print_table(["RoI/img", "size px", "s/step", "steps", "wall min", "segm mAP", "frontier"], rows)
    if not q or args.plot != p.get_default("plot"):
        plot(runs, front, args.plot, budget_min)
        print(f"plot: {args.plot}")
    C.write_result(
        args.results_dir,
        NAME,
        {
            "name": NAME,
            "quick": q,
            "machine": info,
            "settings": {"budget_min": budget_min, "epochs": args.epochs, "val_seconds": val_s},
            "runs": runs,
            "frontier": front,
            "targets": [],
            "skipped": [],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
