"""Training overhead: segbench's Lightning training path against a bare torchvision loop.

Both sides train the same Mask R-CNN (``build_maskrcnn`` with the ``synth_cpu`` experiment's settings,
same seed, so the same initial weights) on the same synthetic images (``segbench.data.synthetic``), with the
same batch size and DataLoader workers, for one epoch of ``--steps`` batches (the training set holds exactly
``steps * batch_size`` images, so both sides see every image once):

* segbench: ``pytorch_lightning.Trainer`` + ``MaskRCNNModule`` + ``CocoDataModule`` (no augmentation,
  ``limit_train_batches=steps``, no validation, no checkpointing, no logger, no progress bar), with the
  experiment's optimizer and LR schedule;
* bare: the same ``CocoDataset`` decode (``load_image`` + ``load_instances`` + dense masks) in a plain
  ``torch.utils.data.DataLoader`` and a plain ``loss.backward(); sgd.step()`` loop.

A step's time is the wall time between the ends of consecutive batches (data wait + forward + backward +
optimizer + framework hooks); the first ``--skip`` steps are dropped. Runs alternate (segbench, bare,
bare, segbench, ...) ``--reps`` times; images/s is the median over runs.

A second check: the segbench DataLoader alone (same settings, no model) must deliver at least 5x the
images/s that the training step consumes.

    python benchmarks/bench_train.py            # the measurement (a few minutes on 2 cores)
    python benchmarks/bench_train.py --quick    # seconds: 96 px, batch 2, 3 steps
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import _common as C

NAME = "bench_train"
TARGET_RATIO = 0.95
TARGET_LOADER = 5.0


def bare_collate(batch):
    return tuple(zip(*batch, strict=True))


def make_bare_dataset(coco):
    """What a torchvision-tutorial user writes on top of segbench's COCO decode."""
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    class BareDataset(Dataset):
        def __len__(self):
            return len(coco)

        def __getitem__(self, i):
            image = coco.load_image(i)
            inst = coco.load_instances(i)
            keep = ~inst.iscrowd
            masks = inst.get_masks()[keep]
            target = {
                "boxes": torch.as_tensor(inst.boxes[keep], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.as_tensor(inst.labels[keep], dtype=torch.int64),
                "masks": torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
                "image_id": int(coco.images[i]["id"]),
            }
            return torch.from_numpy(image).permute(2, 0, 1).float().div_(255), target

    return BareDataset()


def run_segbench(root: Path, net: dict, opt_cfg: dict, sched_cfg: dict, args, seed: int) -> dict:
    import pytorch_lightning as pl
    import torch

    from segbench.data.datamodule import CocoDataModule
    from segbench.models.module import MaskRCNNModule

    class StepTimes(pl.Callback):
        def __init__(self):
            self.t: list[float] = []
            self.ids: list[int] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.t = [time.perf_counter()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.t.append(time.perf_counter())
            self.ids.extend(int(t["image_id"]) for t in batch[1])

    pl.seed_everything(seed, verbose=False)
    dm = CocoDataModule(
        root=str(root), batch_size=args.batch_size, num_workers=args.workers, train_transforms=[]
    )
    dm.setup("fit")
    ds = dm.train_coco
    module = MaskRCNNModule(
        net=net,
        num_classes=ds.num_classes,
        class_names=ds.class_names,
        categories=ds.categories,
        label_to_cat_id=ds.label_to_cat_id,
        optimizer=functools.partial(torch.optim.SGD, **opt_cfg),
        scheduler=sched_cfg,
    )
    cb = StepTimes()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
        default_root_dir=str(root / "lightning"),
    )
    trainer.fit(module, datamodule=dm)
    return {"t": cb.t, "ids": cb.ids}


def run_bare(root: Path, net: dict, opt_cfg: dict, args, seed: int, lr: float) -> dict:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from segbench.data.coco import open_split
    from segbench.models.maskrcnn import build_maskrcnn

    pl.seed_everything(seed, verbose=False)
    coco = open_split(str(root), "train")
    model = build_maskrcnn(num_classes=coco.num_classes, **net)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=opt_cfg["momentum"], weight_decay=opt_cfg["weight_decay"])
    loader = DataLoader(
        make_bare_dataset(coco),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        collate_fn=bare_collate,
    )
    t = [time.perf_counter()]
    ids: list[int] = []
    for step, (images, targets) in enumerate(loader):
        if step >= args.steps:
            break
        ids.extend(int(tg["image_id"]) for tg in targets)
        tg = [{k: v for k, v in x.items() if k != "image_id"} for x in targets]
        losses = model(list(images), tg)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t.append(time.perf_counter())
    return {"t": t, "ids": ids}


def run_loader_only(root: Path, args, seed: int) -> dict:
    import pytorch_lightning as pl

    from segbench.data.datamodule import CocoDataModule

    pl.seed_everything(seed, verbose=False)
    dm = CocoDataModule(
        root=str(root), batch_size=args.batch_size, num_workers=args.workers, train_transforms=[]
    )
    loader = dm.train_dataloader()
    t = [time.perf_counter()]
    for step, _batch in enumerate(loader):
        if step >= args.steps:
            break
        t.append(time.perf_counter())
    return {"t": t}


def steady_ips(t: list[float], skip: int, batch_size: int) -> tuple[float, list[float]]:
    """Images/s over the intervals after the first ``skip`` (and those step times)."""
    steps = [b - a for a, b in zip(t[:-1], t[1:], strict=True)][skip:]
    if not steps:
        raise SystemExit(f"no steady-state steps left: --steps must exceed --skip ({skip})")
    return batch_size * len(steps) / sum(steps), steps


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="batches per run (default 15; quick 3)")
    p.add_argument("--skip", type=int, default=None, help="first steps not timed (default 3; quick 1)")
    p.add_argument("--reps", type=int, default=None, help="runs per side (default 3; quick 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the experiment's (4); quick 2")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers, default: the experiment's")
    p.add_argument(
        "--image-size", type=int, default=None, help="synthetic image size (default 192; quick 96)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (3 if q else 15)
    args.skip = args.skip if args.skip is not None else (1 if q else 3)
    args.reps = args.reps or (1 if q else 3)
    args.image_size = args.image_size or (96 if q else 192)
    C.quiet_logs()
    info = C.header(NAME, args)

    import warnings

    from omegaconf import OmegaConf

    from segbench.data.synthetic import generate

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*that has `shuffle=True`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")

    with tempfile.TemporaryDirectory(prefix="segbench-bench-train-") as tmp:
        cfg = C.experiment_config("synth_cpu", tmp)
        net = OmegaConf.to_container(cfg.model.net, resolve=True)
        net["min_size"] = net["max_size"] = args.image_size
        opt_cfg = {
            k: v for k, v in OmegaConf.to_container(cfg.model.optimizer).items() if not k.startswith("_")
        }
        sched_cfg = OmegaConf.to_container(cfg.model.scheduler)
        sched_cfg["by_time"] = False  # a fixed number of steps here, no time budget to fit the decay to
        args.batch_size = args.batch_size or (2 if q else int(cfg.data.batch_size))
        args.workers = int(cfg.data.num_workers) if args.workers is None else args.workers
        # the bare loop keeps the LR Lightning starts with (warm-up start) constant: plain SGD
        bare_lr = (
            opt_cfg["lr"] * sched_cfg.get("warmup_factor", 1.0)
            if sched_cfg.get("warmup_steps")
            else opt_cfg["lr"]
        )
        root = Path(tmp) / "synth"
        n_img = args.steps * args.batch_size
        t0 = time.perf_counter()
        generate(root, num_train=n_img, num_val=2, image_size=args.image_size, seed=args.seed)
        print(
            f"synthetic data: {n_img} train images of {args.image_size} px in {time.perf_counter() - t0:.1f} s; "
            f"batch {args.batch_size}, {args.workers} worker(s), {args.steps} steps per run ({args.skip} not "
            f"timed), {args.reps} run(s) per side; model {net['backbone']} at {net['min_size']} px"
        )

        sb_runs, bare_runs, loader_runs, same_order = [], [], [], []
        for r in range(args.reps):
            order = ("segbench", "bare") if r % 2 == 0 else ("bare", "segbench")
            got = {}
            for side in order:
                if side == "segbench":
                    got[side] = run_segbench(root, net, opt_cfg, sched_cfg, args, args.seed)
                else:
                    got[side] = run_bare(root, net, opt_cfg, args, args.seed, bare_lr)
            ips_s, steps_s = steady_ips(got["segbench"]["t"], args.skip, args.batch_size)
            ips_b, steps_b = steady_ips(got["bare"]["t"], args.skip, args.batch_size)
            sb_runs.append({"images_per_s": ips_s, "step_s": steps_s})
            bare_runs.append({"images_per_s": ips_b, "step_s": steps_b})
            same_order.append(got["segbench"]["ids"] == got["bare"]["ids"])
            print(f"run {r + 1}/{args.reps}: segbench {ips_s:.2f} img/s, bare {ips_b:.2f} img/s")
        for _r in range(args.reps):
            lo = run_loader_only(root, args, args.seed)
            ips_l, steps_l = steady_ips(lo["t"], args.skip, args.batch_size)
            loader_runs.append({"images_per_s": ips_l, "step_s": steps_l})

    ips_sb = C.median([r["images_per_s"] for r in sb_runs])
    ips_bare = C.median([r["images_per_s"] for r in bare_runs])
    ips_loader = C.median([r["images_per_s"] for r in loader_runs])
    ratio = ips_sb / ips_bare
    loader_ratio = ips_loader / ips_sb
    step_sb = C.median([s for r in sb_runs for s in r["step_s"]])
    step_bare = C.median([s for r in bare_runs for s in r["step_s"]])
    C.print_table(
        ["path", "images/s (median of runs)", "median step s", "vs bare"],
        [
            ["segbench (Lightning + CocoDataModule)", ips_sb, step_sb, ratio],
            ["bare torchvision loop", ips_bare, step_bare, 1.0],
            [
                "segbench DataLoader alone",
                ips_loader,
                C.median([s for r in loader_runs for s in r["step_s"]]),
                None,
            ],
        ],
        title="training throughput (steady state)",
    )
    print(f"same image order on both sides: {all(same_order)} (per run: {same_order})")
    targets = [
        C.target("train: segbench / bare images/s", ratio, TARGET_RATIO),
        C.target("train: DataLoader alone / model consumption", loader_ratio, TARGET_LOADER),
    ]
    C.print_targets(targets, quick=q)
    C.write_result(
        args.results_dir,
        NAME,
        {
            "settings": {
                "steps": args.steps,
                "skip": args.skip,
                "reps": args.reps,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "image_size": args.image_size,
                "net": net,
                "optimizer": opt_cfg,
                "scheduler": sched_cfg,
                "bare_lr": bare_lr,
            },
            "segbench": sb_runs,
            "bare": bare_runs,
            "loader_only": loader_runs,
            "same_order": same_order,
            "images_per_s": {"segbench": ips_sb, "bare": ips_bare, "loader_only": ips_loader},
            "targets": targets,
            "skipped": [],
        },
        quick=q,
        machine=info,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
