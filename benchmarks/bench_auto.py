"""The auto recipe against the hand-written presets, and the training aids' ablation, in one budget.

For each dataset (``synth`` — the embedded default —, ``nuts``, ``dsb2018``) and each arm, ``segbench train``
runs in a child process, one after the other (the CPU must be otherwise idle):

- ``auto``: ``segbench train data.root=DIR budget=B`` — exactly what a new user types;
- ``preset``: the hand-written preset (``experiment=synth_cpu`` / ``nuts_cpu`` / ``dsb2018_cpu``) given the same
  ``B`` minutes: ``trainer.max_time`` = B (its epoch limit lifted, so the clock ends it), its cosine decay fitted
  to that time (``model.scheduler.by_time=true``) and a validation every epoch, so that it has a curve and a
  best checkpoint inside the budget;
- ``ema``, ``copy_paste``, ``repeat_factor``, ``multi_scale``: the auto recipe plus one training aid
  (``callbacks.ema.enabled=true``, ``data.copy_paste=0.5``, ``data.repeat_factor_threshold=0.3``,
  ``recipe.multi_scale=true``), same seed, same budget;
- ``auto_seed1``: the auto recipe with ``seed=1`` — how far one seed moves the result, the yardstick for the
  aids' gains;
- ``fork_workers``: the auto recipe with one loader worker forked again every epoch, as before session 12;
- ``one_worker``: the auto recipe with one loader worker kept for the run, as in session 12 (since session 13
  a CPU whose cores the training threads all use loads the batches between the steps, without a worker);
- ``mask_head_256``: the auto recipe with torchvision's mask head (4 convs of 256 channels; since session 14 a
  CPU trains 128); ``mask_head_128``, ``mask_head_128_l2``: the narrow head set by hand before the rule, the
  second with the RoIs and crops of the lightest level (64 RoIs, 256 px crops).

Every run is scored by ``segbench train``'s own final evaluation (its best checkpoint on the whole val split).
The table gives steps, training minutes, best val segm mAP during training and the final val segm / bbox mAP;
the curves (val segm mAP against training minutes) go to ``--plot``. A run folder that already holds a
finished run (``OUT/<dataset>/<arm>/train/*/*/metrics.json``) is read instead of trained again, so the table
can be filled over several sittings; ``--include dataset:arm:RUN_DIR`` reads a run trained elsewhere.

    python benchmarks/bench_auto.py --datasets synth nuts dsb2018 --budget-min 15          # ~2 h 45 min
    python benchmarks/bench_auto.py --datasets synth --arms auto preset --budget-min 15
    python benchmarks/bench_auto.py --datasets synth_rare --arms auto repeat_factor --budget-min 5
    python benchmarks/bench_auto.py --quick                                                 # a minute
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as C

NAME = "bench_auto"
PRESETS = {"synth": "synth_cpu", "nuts": "nuts_cpu", "dsb2018": "dsb2018_cpu", "synth_rare": "synth_cpu"}
#: ``synth_rare``: the synthetic set with a rare class (triangles are 2 % of the objects, in about 9 % of
#: the images) and a larger val split (so the rare class has enough val instances to score), made for the
#: ``repeat_factor`` arm: every class of the three real sets is in most train images, where the rule is a
#: no-op by construction.
SYNTH_RARE = {"class_probs": (0.49, 0.49, 0.02), "num_val": 200}
#: The aid each ablation arm adds to the auto recipe.
AIDS = {
    "ema": ["callbacks.ema.enabled=true"],
    "copy_paste": ["data.copy_paste=0.5"],
    "repeat_factor": ["data.repeat_factor_threshold=0.3"],
    "multi_scale": ["recipe.multi_scale=true"],
}
#: Controls: the auto recipe as it is, with another seed — its distance from ``auto`` is the noise of one
#: seed, against which an aid's gain is read.
CONTROLS = {
    "auto_seed1": ["seed=1"],
    "fork_workers": ["data.num_workers=1", "data.persistent_workers=false"],
    "one_worker": ["data.num_workers=1", "data.persistent_workers=true"],
    "mask_head_256": ["model.net.mask_head_layers=[256,256,256,256]"],
    "mask_head_128": ["model.net.mask_head_layers=[128,128,128,128]"],
    "mask_head_128_l2": [
        "model.net.mask_head_layers=[128,128,128,128]",
        "model.net.box_batch_size_per_image=64",
        "data.max_crop=256",
    ],
}
#: ``fork_workers``: the auto recipe with its loader worker forked again every epoch (the recipe before
#: session 12 kept the loader's default): the measured side of the persistent-workers rule. ``one_worker``: a
#: worker kept for the run (session 12's recipe), the measured side of the workers rule (none on a busy CPU).
ARMS = ("auto", "preset", *AIDS, *CONTROLS)


def data_roots(quick: bool) -> dict[str, Path]:
    shared = C.ROOT.parent / "shared" / "data"
    return {"synth": C.ROOT / "data" / ("synth_quick" if quick else "synth"), "nuts": shared / "nuts",
            "dsb2018": shared / "dsb2018", "synth_rare": C.ROOT / "data" / "synth_rare"}  # fmt: skip


def arm_overrides(dataset: str, arm: str, root: Path, budget_min: float) -> list[str]:
    minutes = f"00:00:{int(budget_min):02d}:{round((budget_min % 1) * 60):02d}"
    if arm == "preset":
        # max_epochs lifted: the preset's own epoch count (24 for nuts_cpu) would stop it before the clock
        return [f"experiment={PRESETS[dataset]}", f"data.root={root}", f"trainer.max_time={minutes}",
                "trainer.max_epochs=100000", "model.scheduler.by_time=true",
                "trainer.check_val_every_n_epoch=1"]  # fmt: skip
    return [f"data.root={root}", f"budget={budget_min:g}", *AIDS.get(arm, []), *CONTROLS.get(arm, [])]


def finished(out: Path) -> Path | None:
    runs = sorted(p.parent for p in out.glob("train/*/*/metrics.json"))
    return runs[-1] if runs else None


def load_run(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    val = m.get("val") or {}
    hist = [
        {"step": h["step"], "wall_s": h["wall_s"], "val/segm_mAP": h.get("val/segm_mAP")}
        for h in m["history"]
    ]
    recipe = run_dir / "recipe.yaml"
    return {
        "run_dir": str(run_dir),
        "steps": m["global_step"],
        "train_min": m.get("train_wall_seconds", 0.0) / 60,
        "best_val_segm_mAP": m.get("best_val_segm_mAP"),
        "segm_mAP": val.get("segm_AP"),
        "bbox_mAP": val.get("bbox_AP"),
        "per_class_segm_AP": val.get("per_class_segm_AP") or {},
        "history": hist,
        "recipe": recipe.read_text() if recipe.is_file() else None,
    }


def train(dataset: str, arm: str, root: Path, budget_min: float, out: Path, quick: bool) -> dict:
    extra = ["debug=tiny", "experiment=auto", "recipe.probe=false"] if quick and arm != "preset" else []
    if quick and arm == "preset":
        extra = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "data.limit_val=4"]
    cmd = [sys.executable, "-m", "segbench.cli", "train", *arm_overrides(dataset, arm, root, budget_min), *extra,
           f"paths.output_dir={out}", "trainer.enable_progress_bar=false"]  # fmt: skip
    print(f"\n[{dataset}/{arm}] " + " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(f"[{dataset}/{arm}] training failed (exit {proc.returncode})")
    run = {**load_run(finished(out)), "process_wall_s": time.perf_counter() - t0}
    if "auto recipe:" in proc.stdout:
        print(proc.stdout[proc.stdout.index("auto recipe:") :].split("\n\n")[0])
    return run


def plot(table: dict, path: Path, budget_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(table)
    fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 3.8), dpi=110, squeeze=False)
    for ax, dataset in zip(axes[0], sets, strict=True):
        for arm, r in table[dataset].items():
            xs = [0.0] + [h["wall_s"] / 60 for h in r["history"]]
            ys = [0.0] + [h["val/segm_mAP"] or 0.0 for h in r["history"]]
            ax.plot(xs, ys, "-" if arm in ("auto", "preset") else ":", marker="o", ms=3, label=arm)
        ax.set_title(f"{dataset}, {budget_min:g} min", fontsize=10)
        ax.set_xlabel("training minutes (validation included)")
        ax.set_ylabel("val segm mAP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=None, choices=list(PRESETS))
    p.add_argument("--arms", nargs="+", default=None, choices=list(ARMS))
    p.add_argument("--budget-min", type=float, default=15.0, help="training minutes per run (default 15)")
    p.add_argument("--out", type=Path, default=C.ROOT / "outputs" / "bench_auto", help="run folders")
    p.add_argument("--plot", type=Path, default=C.ROOT / "docs" / "auto_curves.png")
    p.add_argument("--include", nargs="*", default=[], help="dataset:arm:RUN_DIR of runs trained elsewhere")
    args = p.parse_args(argv)
    q = args.quick
    datasets = args.datasets or (["synth"] if q else ["synth", "nuts", "dsb2018"])
    arms = args.arms or (["auto", "preset"] if q else list(ARMS))
    budget = 0.5 if q else args.budget_min
    info = C.machine_info()
    C.print_machine(info)
    roots = data_roots(q)
    from segbench.data.synthetic import generate

    if "synth" in datasets and not (roots["synth"] / "annotations" / "instances_train.json").is_file():
        generate(roots["synth"], **({"num_train": 16, "num_val": 8, "image_size": 96} if q else {}))
    if (
        "synth_rare" in datasets
        and not (roots["synth_rare"] / "annotations" / "instances_train.json").is_file()
    ):
        generate(roots["synth_rare"], **SYNTH_RARE)
    given = {}
    for item in args.include:
        dataset, arm, run_dir = item.split(":", 2)
        given[(dataset, arm)] = Path(run_dir)
    table: dict[str, dict[str, dict]] = {}
    for dataset in datasets:
        reason = C.dsb2018_reason(roots[dataset]) if dataset == "dsb2018" else None
        if reason or not roots[dataset].is_dir():
            print(f"[{dataset}] skipped: {reason or f'no {roots[dataset]}'}")
            continue
        for arm in arms:
            out = args.out / dataset / arm
            if (dataset, arm) in given:
                run = load_run(given[(dataset, arm)])
            elif not q and finished(out) is not None:
                run = load_run(finished(out))
                print(f"[{dataset}/{arm}] read the finished run {run['run_dir']}")
            else:
                run = train(dataset, arm, roots[dataset], budget, out, q)
            table.setdefault(dataset, {})[arm] = run
    rows = []
    for dataset, runs in table.items():
        base = runs.get("auto", {}).get("segm_mAP")
        for arm, r in runs.items():
            gain = (
                ""
                if base is None or r["segm_mAP"] is None or arm == "auto"
                else f"{r['segm_mAP'] - base:+.3f}"
            )
            rows.append([dataset, arm, r["steps"], f"{r['train_min']:.1f}", C.fmt(r["best_val_segm_mAP"]),
                         C.fmt(r["segm_mAP"]), C.fmt(r["bbox_mAP"]), gain])  # fmt: skip
    C.print_table(
        ["dataset", "arm", "steps", "train min", "best val segm (training)", "val segm mAP", "val bbox mAP",
         "vs auto"],
        rows,
        title=f"{budget:g} minutes of training per run, {info.get('cpu_model') or 'this CPU'} ({info['cpu_count']} cores)",
    )  # fmt: skip
    for dataset, runs in table.items():  # an aid for rare classes shows on them, not on the mean
        for arm, r in runs.items():
            per_class = "  ".join(f"{n} {C.fmt(v)}" for n, v in r.get("per_class_segm_AP", {}).items())
            print(f"{dataset}/{arm} per-class val segm AP: {per_class or '-'}")
    if table and (not q or args.plot != p.get_default("plot")):
        plot(table, args.plot, budget)
        print(f"plot: {args.plot}")
    C.write_result(args.results_dir, NAME, {"budget_min": budget, "table": table}, quick=q, machine=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
