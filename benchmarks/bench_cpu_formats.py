"""CPU training step: float32 vs channels_last vs bfloat16 autocast vs both, side by side.

The ``synth_cpu`` experiment's Mask R-CNN (ResNet-18-FPN, its RoI sampling and image size) trains on the
same fixed batches of synthetic images under four settings:

* ``fp32``: what ``trainer.precision=32-true`` runs;
* ``channels_last``: ``model.channels_last=true`` (weights and feature maps NHWC, oneDNN convolutions);
* ``bf16``: ``trainer.precision=bf16-mixed`` (``torch.autocast("cpu", torch.bfloat16)``, float32 weights);
* ``bf16+channels_last``: both.

Each run starts from the same weights (a copy), does ``--steps`` SGD steps (forward, backward, optimizer),
and the first ``--skip`` are not timed. Runs alternate (fp32, channels_last, bf16, both, then again in
reverse) ``--reps`` times; the figure is the median step time over all timed steps of a setting. The
first step's loss is printed as a sanity check: float32 and channels_last agree to rounding; under bfloat16
it differs more, mostly because the RPN ranks its proposals by bfloat16 scores and so keeps other ones.

The cost of a Mask R-CNN step depends on how trained the model is: the mask head runs on the positive RoIs,
and an untrained RPN proposes few. Pass ``--weights`` (a segbench checkpoint of a ``synth_cpu`` run, e.g.
``outputs/train/synth_cpu/<run>/checkpoints/last.ckpt``) to time the steps that a training run spends
most of its time in; without it the model is untrained and the steps are cheaper than real ones.

bfloat16 is fast only where the CPU has bfloat16 instructions (AVX512-BF16 or AMX); elsewhere autocast
emulates it and is slower. The script prints what this CPU has (``segbench.training.cpu_has_bf16``).

    python benchmarks/bench_cpu_formats.py --weights RUN/checkpoints/last.ckpt   # about 2 minutes
    python benchmarks/bench_cpu_formats.py --quick                              # seconds
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import _common as C

NAME = "bench_cpu_formats"
SETTINGS = (
    ("fp32", False, False),
    ("channels_last", True, False),
    ("bf16", False, True),
    ("bf16+channels_last", True, True),
)
TARGET_SPEEDUP = 1.3  # the fastest setting vs fp32, on a CPU with bfloat16 instructions


def load_batches(root: Path, batch_size: int, n: int) -> list:
    from segbench.data.datamodule import CocoDataModule

    dm = CocoDataModule(root=str(root), batch_size=batch_size, num_workers=0, train_transforms=[])
    dm.setup("fit")
    out = []
    for images, targets in dm.train_dataloader():
        out.append((list(images), [{k: v for k, v in t.items() if k != "image_id"} for t in targets]))
        if len(out) == n:
            break
    return out


def run(base, batches, *, channels_last: bool, bf16: bool, skip: int, seed: int) -> tuple[list[float], float]:
    """Step times (after ``skip``) and the first step's loss (same seed: the same RoIs are sampled)."""
    import torch

    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
    times, first_loss = [], float("nan")
    for i, (images, targets) in enumerate(batches):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i == 0:
            first_loss = float(loss.detach())
        if i >= skip:
            times.append(dt)
    return times, first_loss


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="a synth_cpu checkpoint (see above)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 8; quick 2)")
    p.add_argument("--skip", type=int, default=None, help="first steps not timed (default 2; quick 1)")
    p.add_argument("--reps", type=int, default=None, help="runs per setting (default 2; quick 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (2 if q else 8)
    args.skip = args.skip if args.skip is not None else 1 if q else 2
    args.reps = args.reps or (1 if q else 2)
    C.quiet_logs()
    info = C.header(NAME, args)

    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from segbench.data.synthetic import generate
    from segbench.models.maskrcnn import build_maskrcnn
    from segbench.training import cpu_has_bf16

    bf16_native = cpu_has_bf16()
    print(f"bfloat16 instructions on this CPU (AVX512-BF16 or AMX): {bf16_native}")
    with tempfile.TemporaryDirectory(prefix="segbench-bench-formats-") as tmp:
        cfg = C.experiment_config("synth_cpu", tmp)
        net = OmegaConf.to_container(cfg.model.net, resolve=True)
        size = 96 if q else int(net["max_size"])
        net["min_size"] = net["max_size"] = size
        batch_size = 2 if q else int(cfg.data.batch_size)
        root = Path(tmp) / "synth"
        generate(root, num_train=batch_size * args.steps, num_val=1, image_size=size, seed=args.seed)
        pl.seed_everything(args.seed, verbose=False)
        batches = load_batches(root, batch_size, args.steps)
        net["weights"] = str(args.weights) if args.weights else None
        base = build_maskrcnn(num_classes=3, **net)

        times: dict[str, list[float]] = {name: [] for name, _, _ in SETTINGS}
        losses: dict[str, float] = {}
        for rep in range(args.reps):
            order = SETTINGS if rep % 2 == 0 else tuple(reversed(SETTINGS))
            for name, cl, bf in order:
                t, loss = run(base, batches, channels_last=cl, bf16=bf, skip=args.skip, seed=args.seed)
                times[name].extend(t)
                losses[name] = loss
                print(f"  rep {rep + 1} {name:<18} median step {statistics.median(t):.3f} s", flush=True)

    fp32 = C.median(times["fp32"])
    rows, speedups = [], {}
    for name, _, _ in SETTINGS:
        med = C.median(times[name])
        speedups[name] = fp32 / med
        rows.append([name, med, speedups[name], losses[name], losses[name] - losses["fp32"]])
    C.print_table(
        ["setting", "step s", "speed-up vs fp32", "first-step loss", "loss - fp32 loss"],
        rows,
        title=f"Mask R-CNN train step, synth_cpu model at {size} px, batch {batch_size}, "
        f"{'weights ' + str(args.weights) if args.weights else 'untrained'}",
    )
    best = max(speedups, key=speedups.get)
    targets = [
        C.target(
            f"train step: {best} / fp32",
            speedups[best],
            TARGET_SPEEDUP,
            note="" if bf16_native else "this CPU has no bfloat16 instructions",
        )
    ]
    C.print_targets(targets, quick=q)
    C.write_result(
        args.results_dir,
        NAME,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "bf16_native": bf16_native,
            "image_size": size,
            "batch_size": batch_size,
            "step_s": {k: C.median(v) for k, v in times.items()},
            "speedup_vs_fp32": speedups,
            "first_step_loss": losses,
            "targets": targets,
        },
        quick=q,
        machine=info,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
