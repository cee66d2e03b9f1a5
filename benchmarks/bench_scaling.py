"""Scaling over processes: ``segbench train`` and ``segbench predict`` with 1 vs 2 CPU processes.

Both are run through the command line (``segbench ...`` in a subprocess), as a user runs them, side by side
on the same machine, settings alternated run by run (1, 2, 2, 1, ...):

* **train**: ``experiment=synth_cpu`` (``--quick``: 96 px and the tiny RoI settings) on synthetic images,
  one process (``trainer=cpu``) against two DDP processes on gloo (``trainer=ddp_cpu``, Lightning starts the
  second), with the **same per-process batch** (``--batch-size``), so the 2-process run steps through twice
  the images per step. A step's time is the wall time between the ends of consecutive batches on rank 0
  (data wait + forward + backward + all-reduce + optimizer; a callback of this script, ``StepTimes``,
  records it); the first ``--skip`` steps are dropped. Reported: steps/s, images/s, and the ratios 2 / 1.
  Perfect scaling is steps/s ratio 1.0 (images/s ratio 2.0) with enough cores for both processes.
* **predict**: the same images (``--images``) predicted with the checkpoint the first training run wrote,
  by one process (no ``trainer=``) against two (``trainer=ddp_cpu``: Lightning's ``trainer.predict`` splits
  the images over the processes; ``segbench.distributed``). Startup (imports, model load, DDP set-up) is
  taken out: the same command on ``--warm-images`` images is timed too, and the steady images/s is
  ``(images - warm_images) / (wall(images) - wall(warm_images))``; the end-to-end images/s is printed beside.
  Where ``segbench predict`` has no ``trainer=`` option the 2-process row says "not available". ``--quick``
  skips the startup runs (end-to-end images/s only).

The cores are split between the processes (``OMP_NUM_THREADS`` / ``num_threads=``: all cores for one
process, half each for two; ``--threads``), so that the ratio measures the split of the work, not thread
oversubscription. On a 2-core machine two processes have one core each: expect little or no gain there;
the ratio is what matters on machines with more cores or with one GPU per process.

    python benchmarks/bench_scaling.py            # the measurement (several minutes on 2 cores)
    python benchmarks/bench_scaling.py --quick    # a smoke test: tiny sizes, one run per setting
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

NAME = "bench_scaling"
HERE = Path(__file__).resolve().parent
SEGBENCH = str(Path(sys.executable).parent / "segbench")

try:  # the callback runs inside `segbench train`, which imports this file by name (PYTHONPATH=HERE)
    import pytorch_lightning as _pl

    class StepTimes(_pl.Callback):
        """Rank 0 writes ``step_times.json`` into the run folder: ``time.perf_counter()`` at the end of each
        training batch."""

        def __init__(self) -> None:
            self.t: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.t.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            if trainer.is_global_zero:
                (Path(trainer.default_root_dir) / "step_times.json").write_text(json.dumps(self.t))

except ImportError:  # pragma: no cover - Lightning is a dependency of segbench
    pass


def _env(threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = str(threads)
    for k in ("SEGBENCH_RUN_DIR", "SEGBENCH_START_TIME", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(k, None)
    return env


def _run(
    args: list[str], threads: int, *, timeout: float = 1800
) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    p = subprocess.run([SEGBENCH, *args], capture_output=True, text=True, env=_env(threads), timeout=timeout)
    return p, time.perf_counter() - t0


def _fail(what: str, p: subprocess.CompletedProcess) -> RuntimeError:
    return RuntimeError(f"{what} failed (exit {p.returncode}):\n{(p.stderr or p.stdout)[-3000:]}")


def train_once(root: Path, out: Path, procs: int, args, threads: int, name: str) -> dict:
    """One ``segbench train`` run; its steady steps/s from rank 0's step times."""
    cmd = [
        "train",
        "experiment=synth_cpu",
        f"data.root={root}",
        f"paths.output_dir={out}",
        f"name={name}",
        "trainer=cpu" if procs == 1 else "trainer=ddp_cpu",
        *([] if procs == 1 else [f"trainer.devices={procs}"]),
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        "data.train_transforms=[]",
        "data.limit_val=2",
        "trainer.max_epochs=1",
        "trainer.max_time=null",
        f"trainer.limit_train_batches={args.steps}",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "model.scheduler.by_time=false",
        f"model.net.min_size={args.image_size}",
        f"model.net.max_size={args.image_size}",
        "test_after_fit=false",
        "+callbacks.step_times._target_=bench_scaling.StepTimes",
    ]
    p, wall = _run(cmd, threads)
    if p.returncode != 0:
        raise _fail(f"segbench train ({procs} process(es))", p)
    (run,) = (out / "train" / name).glob("*/")
    t = json.loads((run / "step_times.json").read_text())
    timed = t[args.skip :]
    steps_s = (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
    ckpt = run / "checkpoints" / "last.ckpt"
    return {
        "steps_per_s": steps_s,
        "images_per_s": steps_s * args.batch_size * procs,
        "wall_s": wall,
        "steps": len(t),
        "ckpt": str(ckpt) if ckpt.is_file() else None,
    }


def predict_available(ckpt: str, images: Path) -> bool:
    """Whether ``segbench predict`` takes ``trainer=ddp_cpu`` (composes with ``--cfg``)."""
    p, _ = _run(["predict", f"ckpt_path={ckpt}", f"input={images}", "trainer=ddp_cpu", "--cfg"], 1)
    return p.returncode == 0


def predict_once(ckpt: str, images: Path, out: Path, procs: int, threads: int, args) -> float:
    """The wall time of one ``segbench predict`` over ``images``."""
    cmd = [
        "predict",
        f"ckpt_path={ckpt}",
        f"input={images}",
        f"output={out}",
        f"batch_size={args.predict_batch}",
        f"num_threads={threads}",
        "save_overlays=false",
        "progress=false",
        *([] if procs == 1 else ["trainer=ddp_cpu", f"trainer.devices={procs}"]),
    ]
    p, wall = _run(cmd, threads)
    if p.returncode != 0:
        raise _fail(f"segbench predict ({procs} process(es))", p)
    n = len(json.loads((out / "images.json").read_text()))
    expected = len(list(images.glob("*.png")))
    if n != expected:
        raise RuntimeError(f"segbench predict ({procs} process(es)) wrote {n} images, not {expected}")
    return wall


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, help="training steps per run (default 15; quick 4)")
    p.add_argument("--skip", type=int, help="first steps not timed (default 3; quick 1)")
    p.add_argument("--batch-size", type=int, help="images per process per step (default 2)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per process (default 0)")
    p.add_argument("--image-size", type=int, help="training and synthetic image side (default 192; quick 96)")
    p.add_argument("--images", type=int, help="images to predict (default 48; quick 6)")
    p.add_argument("--warm-images", type=int, help="images of the startup run (default 4; quick 2)")
    p.add_argument("--predict-batch", type=int, default=2, help="predict batch_size (default 2)")
    p.add_argument("--reps", type=int, help="runs per setting (default 2; quick 1)")
    p.add_argument("--threads", type=int, help="torch threads of the 1-process runs (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (4 if q else 15)
    args.skip = args.skip if args.skip is not None else (1 if q else 3)
    args.batch_size = args.batch_size or 2
    args.image_size = args.image_size or (96 if q else 192)
    args.images = args.images or (6 if q else 48)
    args.warm_images = args.warm_images or (2 if q else 4)
    args.reps = args.reps or (1 if q else 2)
    cores = args.threads or os.cpu_count() or 1
    threads = {1: cores, 2: max(1, cores // 2)}
    C.quiet_logs()
    info = C.header(NAME, args)

    from segbench.data.synthetic import generate

    skipped: list[dict] = []
    train: dict[int, list[dict]] = {1: [], 2: []}
    wall: dict[tuple[int, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="segbench-bench-scaling-") as tmp:
        tmp = Path(tmp)
        root = tmp / "synth"
        n_train = args.steps * args.batch_size * 2
        generate(root, num_train=n_train, num_val=2, image_size=args.image_size, seed=args.seed)
        print(
            f"synthetic data: {n_train} train images of {args.image_size} px; per-process batch "
            f"{args.batch_size}, {args.steps} steps per run ({args.skip} not timed), {args.reps} run(s) per "
            f"setting; torch threads: {threads[1]} for 1 process, {threads[2]} each for 2",
            flush=True,
        )
        for r in range(args.reps):
            for procs in (1, 2) if r % 2 == 0 else (2, 1):
                got = train_once(root, tmp / "out", procs, args, threads[procs], f"p{procs}_r{r}")
                train[procs].append(got)
                print(f"train run {r + 1}, {procs} process(es): {got['steps_per_s']:.3f} steps/s", flush=True)
        ckpt = next((x["ckpt"] for x in train[1] + train[2] if x["ckpt"]), None)

        # predict: the same images for every setting
        pred_ok = ckpt is not None and predict_available(ckpt, root / "images")
        many, few = tmp / "predict_many", tmp / "predict_few"
        many.mkdir()
        few.mkdir()
        pool = sorted((root / "images").glob("*.png"))
        for k, src in enumerate(pool[: args.images]):
            (many / src.name).symlink_to(src)
            if k < args.warm_images:
                (few / src.name).symlink_to(src)
        settings = (1, 2) if pred_ok else (1,)
        if not pred_ok:
            skipped.append(
                C.skipped(
                    "predict with 2 processes",
                    "not available: `segbench predict ... trainer=ddp_cpu` does not compose here"
                    if ckpt
                    else "no checkpoint was written by the training runs",
                )
            )
        if ckpt is not None:
            for r in range(args.reps):
                for procs in settings if r % 2 == 0 else settings[::-1]:
                    runs = (("many", many),) if q else (("few", few), ("many", many))  # quick: no startup run
                    for label, folder in runs:
                        w = predict_once(
                            ckpt, folder, tmp / f"pred_{procs}_{label}_{r}", procs, threads[procs], args
                        )
                        wall.setdefault((procs, label == "many"), []).append(w)
                    print(
                        f"predict run {r + 1}, {procs} process(es): {wall[(procs, True)][-1]:.1f} s",
                        flush=True,
                    )

    def med(procs: int, key: str) -> float:
        return C.median([x[key] for x in train[procs]])

    t_ratio = med(2, "steps_per_s") / med(1, "steps_per_s")
    rows = [
        [
            f"train, {n} process(es) x batch {args.batch_size}",
            med(n, "steps_per_s"),
            med(n, "images_per_s"),
            None,
        ]
        for n in (1, 2)
    ]
    rows[1][3] = t_ratio
    predict: dict[str, float | None] = {}
    for n in (1, 2):
        if (n, True) in wall:
            w_many, w_few = C.median(wall[(n, True)]), C.median(wall.get((n, False), []))
            steady = (args.images - args.warm_images) / (w_many - w_few) if w_many > w_few else float("nan")
            predict[f"{n}_steady_images_per_s"] = steady
            predict[f"{n}_end_to_end_images_per_s"] = args.images / w_many
    p_ratio = None
    if "2_steady_images_per_s" in predict:
        key = "end_to_end" if q else "steady"
        p_ratio = predict[f"2_{key}_images_per_s"] / predict[f"1_{key}_images_per_s"]
    C.print_table(
        ["setting", "steps/s", "images/s", "ratio 2 / 1 (steps/s)"], rows, title="training (rank 0's steps)"
    )
    C.print_table(
        [
            "setting",
            "steady images/s",
            "end-to-end images/s",
            "ratio 2 / 1 (end-to-end)" if q else "ratio 2 / 1 (steady)",
        ],
        [
            [
                f"predict, {n} process(es)",
                predict.get(f"{n}_steady_images_per_s"),
                predict.get(f"{n}_end_to_end_images_per_s"),
                p_ratio if n == 2 else None,
            ]
            if f"{n}_steady_images_per_s" in predict
            else [f"predict, {n} process(es)", "not available", "not available", None]
            for n in (1, 2)
        ],
        title=f"predict ({args.images} images"
        + (
            "; --quick: no startup run, end-to-end only)"
            if q
            else f"; startup measured on {args.warm_images})"
        ),
    )
    print(
        f"train: 2 processes make {t_ratio:.2f}x the steps/s of 1 with the same per-process batch "
        f"({2 * t_ratio:.2f}x the images/s)"
        + (
            f"; predict: 2 processes {p_ratio:.2f}x the images/s of 1"
            if p_ratio
            else "; predict 2: not available"
        )
    )
    C.write_result(
        args.results_dir,
        NAME,
        {
            "settings": {
                k: getattr(args, k)
                for k in (
                    "steps",
                    "skip",
                    "batch_size",
                    "workers",
                    "image_size",
                    "images",
                    "warm_images",
                    "reps",
                )
            }
            | {"threads": threads},
            "train": {str(k): v for k, v in train.items()},
            "predict": predict,
            "ratios": {"train_steps_per_s_2_over_1": t_ratio, "predict_images_per_s_2_over_1": p_ratio},
            "targets": [],
            "skipped": skipped,
        },
        quick=q,
        machine=info,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
