"""RoIAlign on a CPU: segbench's gather pooling against torchvision's kernel, side by side.

Two parts, each alternating the two poolers (``segbench.models.roi_pool.FastMultiScaleRoIAlign`` and
torchvision's ``MultiScaleRoIAlign``) over ``--reps`` rounds, medians reported:

* **the op**: the box pooler (7x7) and the mask pooler (14x14) on a 4-level FPN of 256 channels in
  bfloat16, channels-last (what a ``bf16-mixed`` + ``channels_last`` step feeds them), RoIs spread over
  the levels: training shapes (4 images of 384 px, 128 box RoIs and 32 mask RoIs per image) forward +
  backward, and prediction shapes (one 1024 px image, 900 box RoIs, 450 mask RoIs) forward only;
* **the training step**: the dsb2018 auto recipe's model (ResNet-18-FPN from scratch, native-size 384 px
  crops, 128 RoIs per image, a 4 x 128 mask head, anchors 8-128, bfloat16 autocast + channels_last) on the
  same batches of dsb2018 train crops, forward + backward + SGD, with the RoI sampler taking its full
  positive share as a trained model's does (the probe's ``_as_trained``). Both models start from the same
  weights; the first step's losses are printed (they agree to float rounding). Without the shared dsb2018
  data the step runs on synthetic 192 px images with the ``synth_cpu`` model.

    python benchmarks/bench_roi_align.py            # about 2 minutes
    python benchmarks/bench_roi_align.py --quick    # seconds
"""

from __future__ import annotations

import copy
from pathlib import Path

import _common as C

NAME = "bench_roi_align"
TARGET_STEP = 1.15  # training step: torchvision's pooling / segbench's


def _rois(n: int, images: int, side: int, seed: int):
    """``n`` boxes per image of 4-64 px (nuclei to cells), as the list a pooler takes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(images):
        xy = torch.rand(n, 2, generator=g) * (side - 64)
        wh = 4 + torch.rand(n, 2, generator=g) ** 2 * 60
        out.append(torch.cat([xy, xy + wh], 1))
    return out


def op_times(*, side: int, images: int, n_box: int, n_mask: int, train: bool, reps: int, seed: int) -> dict:
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    from segbench.models.roi_pool import FastMultiScaleRoIAlign

    torch.manual_seed(seed)
    feats = {
        str(i): torch.randn(images, 256, side >> (2 + i), side >> (2 + i))
        .bfloat16()
        .contiguous(memory_format=torch.channels_last)
        .requires_grad_(train)
        for i in range(4)
    }
    shapes = [(side, side)] * images
    result: dict[str, dict[str, float]] = {}
    for what, out, n in (("box 7x7", 7, n_box), ("mask 14x14", 14, n_mask)):
        boxes = _rois(n, images, side, seed)
        pools = {
            "torchvision": MultiScaleRoIAlign(list(feats), out, 2),
            "segbench": MultiScaleRoIAlign(list(feats), out, 2),
        }
        pools["segbench"].__class__ = FastMultiScaleRoIAlign
        times: dict[str, list[float]] = {k: [] for k in pools}

        def call(pool, boxes=boxes):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = pool(feats, boxes, shapes)
            if train:
                y.float().sum().backward()

        for rep in range(reps):
            for name in pools if rep % 2 == 0 else reversed(list(pools)):
                times[name].extend(C.timeit(lambda p=pools[name]: call(p), reps=3, warmup=1))
        result[what] = {k: C.median(v) for k, v in times.items()}
    return result


def _step_setup(quick: bool, seed: int, tmp: str):
    """The model settings and fixed batches of the step part: dsb2018 crops, or synthetic images."""
    import torch

    from segbench.data.datamodule import CocoDataModule, collate

    reason = C.dsb2018_reason(C.DSB2018)
    batch = 2 if quick else 4
    n = 3 if quick else 8
    if reason is None:
        net = {
            "backbone": "resnet18_fpn",
            "weights": None,
            "keep_size": True,
            "anchor_sizes": [8, 16, 32, 64, 128],
            "box_batch_size_per_image": 128,
            "rpn_pre_nms_top_n_train": 1800,
            "rpn_post_nms_top_n_train": 900,
            "box_detections_per_img": 450,
            "mask_head_layers": [128, 128, 128, 128],
        }
        dm = CocoDataModule(
            root=str(C.DSB2018), batch_size=batch, num_workers=0, max_crop=128 if quick else 384
        )
        what = f"dsb2018 train, {128 if quick else 384} px crops"
    else:
        from segbench.data.synthetic import generate

        C.skipped("dsb2018 step", reason + "; the step part uses synthetic 192 px images")
        cfg = C.experiment_config("synth_cpu", tmp)
        from omegaconf import OmegaConf

        net = OmegaConf.to_container(cfg.model.net, resolve=True)
        net["weights"] = None
        generate(Path(tmp) / "synth", num_train=batch * n, num_val=1, image_size=192, seed=seed)
        dm = CocoDataModule(root=str(Path(tmp) / "synth"), batch_size=batch, num_workers=0)
        what = "synthetic 192 px"
    dm.setup("fit")
    ds = dm.train_dataset()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=g)[: batch * n].tolist()
    batches = []
    for i in range(n):
        images, targets = collate([ds[k] for k in order[i * batch : (i + 1) * batch]])
        batches.append((list(images), [{k: v for k, v in t.items() if k != "image_id"} for t in targets]))
    return net, batches, dm.train_coco.num_classes, what


def step_times(net: dict, batches, num_classes: int, *, reps: int, skip: int, seed: int) -> tuple[dict, dict]:
    """Median step time and first-step loss of each pooling: bench_cpu_formats' bf16 + channels_last steps,
    with the RoI sampler taking its full positive share (the copy each run trains inherits it)."""
    import torch
    from bench_cpu_formats import run

    from segbench.models.maskrcnn import build_maskrcnn
    from segbench.models.roi_pool import torchvision_roi_pools
    from segbench.recipe import _as_trained

    torch.manual_seed(seed)
    base = build_maskrcnn(num_classes=num_classes, **net)
    models = {"segbench": base, "torchvision": torchvision_roi_pools(copy.deepcopy(base))}
    times: dict[str, list[float]] = {k: [] for k in models}
    first: dict[str, float] = {}
    for rep in range(reps):
        for name in models if rep % 2 == 0 else reversed(list(models)):
            with _as_trained(models[name]):
                t, first[name] = run(
                    models[name], batches, channels_last=True, bf16=True, skip=skip, seed=seed
                )
            times[name].extend(t)
            print(f"  rep {rep + 1} {name:<12} median step {C.median(t):.3f} s", flush=True)
    return {k: C.median(v) for k, v in times.items()}, first


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=None, help="alternated rounds (default 2; quick 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.reps = args.reps or (1 if q else 2)
    C.quiet_logs()
    info = C.header(NAME, args)
    import tempfile

    train_ops = op_times(
        side=128 if q else 384,
        images=4,
        n_box=16 if q else 128,
        n_mask=4 if q else 32,
        train=True,
        reps=args.reps,
        seed=args.seed,
    )
    pred_ops = op_times(
        side=256 if q else 1024,
        images=1,
        n_box=100 if q else 900,
        n_mask=50 if q else 450,
        train=False,
        reps=args.reps,
        seed=args.seed,
    )
    rows = []
    for label, res in (("train: forward + backward", train_ops), ("predict: forward", pred_ops)):
        for what, t in res.items():
            rows.append(
                [label, what, t["torchvision"] * 1e3, t["segbench"] * 1e3, t["torchvision"] / t["segbench"]]
            )
    C.print_table(
        ["shapes", "pooler", "torchvision ms", "segbench ms", "speed-up"], rows, title="RoIAlign alone"
    )

    with tempfile.TemporaryDirectory(prefix="segbench-bench-roi-") as tmp:
        net, batches, ncls, what = _step_setup(q, args.seed, tmp)
        steps, first = step_times(net, batches, ncls, reps=args.reps, skip=1 if q else 2, seed=args.seed)
    ratio = steps["torchvision"] / steps["segbench"]
    C.print_table(
        ["pooling", "step s", "first-step loss"],
        [[k, steps[k], first[k]] for k in ("torchvision", "segbench")],
        title=f"Mask R-CNN training step ({what}, batch {len(batches[0][0])}, bf16 + channels_last)",
    )
    targets = [C.target("train step: torchvision pooling / segbench pooling", ratio, TARGET_STEP)]
    C.print_targets(targets, quick=q)
    C.write_result(
        args.results_dir,
        NAME,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "ops_train": train_ops,
            "ops_predict": pred_ops,
            "step": what,
            "step_s": steps,
            "first_step_loss": first,
            "targets": targets,
        },
        quick=q,
        machine=info,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
