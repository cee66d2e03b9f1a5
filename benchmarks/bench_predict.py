"""Inference overhead and the CPU latency split of Mask R-CNN prediction.

Part A — throughput on the same synthetic images, same model object (``synth_cpu`` settings, untrained,
``box_score_thresh=0`` so every image gets the full ``box_detections_per_img`` detections):

* segbench: ``MaskRCNNSegmenter.predict_batch`` (``predict_instances``: RLE masks out);
* bare: ``model(images)`` (torchvision pastes every mask as a full-size float image), then
  ``masks > 0.5`` to numpy;
* bare + RLE: the same, then ``masks_to_rles`` (what segbench's output holds), and RLE alone.

Target: segbench images/s >= 0.95x the bare forward + paste (segbench does more: it RLE-encodes).

Part B — latency per image, split into preprocess (``model.transform``), backbone, RPN, RoI heads (box +
mask head), then the mask post-processing both ways on the *same* detections: torchvision's
``transform.postprocess`` (``paste_masks_in_image``) + threshold + per-mask RLE encode, against segbench's
``paste_masks_to_rles`` (paste and encode fused, one reused buffer). (a) synthetic images with the
``synth_cpu`` settings; (b) dsb2018 val images at native size with the ``dsb2018_cpu`` settings
(``keep_size``, ``box_detections_per_img=500``) and ``box_score_thresh=0`` (untrained: the worst case,
about 500 detections). The dsb2018 part is skipped, with the reason printed, when ../shared/data/dsb2018 is
absent.

    python benchmarks/bench_predict.py           # the measurement (a few minutes on 2 cores)
    python benchmarks/bench_predict.py --quick   # seconds
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common as C

NAME = "bench_predict"
TARGET_RATIO = 0.95


def build(experiment: str, overrides: dict):
    from omegaconf import OmegaConf

    from segbench.models.maskrcnn import build_maskrcnn
    from segbench.models.segmenter import fix_roi_pool_scales

    overrides = dict(overrides)
    num_classes = overrides.pop("_num_classes", 3)  # synthetic: 3 shape classes; dsb2018: nucleus
    with tempfile.TemporaryDirectory() as tmp:
        cfg = C.experiment_config(experiment, tmp)
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    net.update(overrides)
    import torch

    torch.manual_seed(0)
    model = build_maskrcnn(num_classes=num_classes, **net)
    return fix_roi_pool_scales(model.eval()), net


def to_tensor(image):
    import torch

    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255)


# --------------------------------------------------------------------------------------------------
# Part A
# --------------------------------------------------------------------------------------------------
def part_a(model, images, *, batch_size: int, reps: int, warmup: int) -> dict:
    import torch

    from segbench.models.segmenter import MaskRCNNSegmenter
    from segbench.types import masks_to_rles

    seg = MaskRCNNSegmenter(model)
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    n_dets: list[int] = []

    def run_segbench():
        for ch in chunks:
            seg.predict_batch(ch)

    @torch.inference_mode()
    def bare(encode: bool):
        out = []
        for ch in chunks:
            for o in model([to_tensor(im) for im in ch]):
                m = (o["masks"][:, 0] > 0.5).numpy()
                out.append(masks_to_rles(m) if encode else m)
        return out

    masks = bare(False)
    n_dets = [len(m) for m in masks]

    def run_rle_only():
        for m in masks:
            masks_to_rles(m)

    fns = {
        "segbench": run_segbench,
        "bare": lambda: bare(False),
        "bare+rle": lambda: bare(True),
        "rle_only": run_rle_only,
    }
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):  # interleaved, rotating the order
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    n = len(images)
    med = {k: C.median(v) for k, v in times.items()}
    return {
        "images": n,
        "batch_size": batch_size,
        "detections_per_image": C.median(n_dets),
        "seconds": times,
        "images_per_s": {k: n / v for k, v in med.items() if k != "rle_only"},
        "ms_per_image": {k: 1000 * v / n for k, v in med.items()},
        "ratio_vs_bare": med["bare"] / med["segbench"],
        "ratio_vs_bare_rle": med["bare+rle"] / med["segbench"],
        "rle_share_of_bare_rle": med["rle_only"] / med["bare+rle"],
    }


# --------------------------------------------------------------------------------------------------
# Part B
# --------------------------------------------------------------------------------------------------
STAGES = ("preprocess", "backbone", "rpn", "roi_heads", "tv_paste", "tv_encode", "sb_paste_encode")


def staged_once(model, image, *, max_paste_bytes: float, threshold: float = 0.5) -> dict:
    """One image through the network stage by stage, then both mask post-processings on its detections.

    torchvision's paste is left out when it would need more than ``max_paste_bytes`` (float32
    probabilities + the thresholded bool copy, one full-size image per detection)."""
    import torch
    from torchvision.models.detection.transform import resize_boxes

    from segbench.models.segmenter import paste_masks_to_rles
    from segbench.types import masks_to_rles

    t = {}
    with torch.inference_mode():
        x = [to_tensor(image)]
        size = tuple(image.shape[:2])
        t0 = time.perf_counter()
        il, _ = model.transform(x)
        t1 = time.perf_counter()
        feats = model.backbone(il.tensors)
        t2 = time.perf_counter()
        props, _ = model.rpn(il, feats)
        t3 = time.perf_counter()
        dets, _ = model.roi_heads(feats, props, il.image_sizes)
        t4 = time.perf_counter()
        t.update(preprocess=t1 - t0, backbone=t2 - t1, rpn=t3 - t2, roi_heads=t4 - t3)
        det = dets[0]
        n = len(det["boxes"])
        # segbench
        t5 = time.perf_counter()
        boxes = resize_boxes(det["boxes"], il.image_sizes[0], size)
        sb = paste_masks_to_rles(det["masks"].float(), boxes.float(), size, threshold=threshold)
        t6 = time.perf_counter()
        t["sb_paste_encode"] = t6 - t5
        same = None
        est = n * size[0] * size[1] * 5
        tv_paste = est <= max_paste_bytes
        t["tv_paste_bytes_estimate"] = est
        if tv_paste:
            t7 = time.perf_counter()
            res = model.transform.postprocess([dict(det)], il.image_sizes, [size])
            t8 = time.perf_counter()
            m = (res[0]["masks"][:, 0] > threshold).numpy()
            tv = masks_to_rles(m)
            t9 = time.perf_counter()
            t.update(tv_paste=t8 - t7, tv_encode=t9 - t8)
            same = sum(a["counts"] == b["counts"] for a, b in zip(tv, sb, strict=True))
            del res, m
    return {"t": t, "detections": n, "identical_masks": same}


def part_b(model, images, names, *, reps: int, warmup: int, max_paste_bytes: float) -> list[dict]:
    rows = []
    for image, name in zip(images, names, strict=True):
        h, w = image.shape[:2]
        runs = [staged_once(model, image, max_paste_bytes=max_paste_bytes) for _ in range(warmup + reps)]
        runs = runs[warmup:]
        est = runs[0]["t"].pop("tv_paste_bytes_estimate")
        tv_ok = "tv_paste" in runs[0]["t"]
        med = {
            s: C.median([r["t"][s] for r in runs if s in r["t"]]) if s in runs[0]["t"] else None
            for s in STAGES
        }
        network = sum(med[s] for s in ("preprocess", "backbone", "rpn", "roi_heads"))
        row = {
            "image": name,
            "size": [h, w],
            "detections": runs[0]["detections"],
            "ms": {k: (None if v is None else 1000 * v) for k, v in med.items()},
            "network_ms": 1000 * network,
            "tv_paste_bytes_estimate": est,
            "tv_paste_skipped": None if tv_ok else f"would need ~{est / 2**30:.1f} GiB (> --max-paste-gb)",
            "identical_masks": runs[0]["identical_masks"],
        }
        if tv_ok:
            row["tv_total_ms"] = 1000 * (network + med["tv_paste"] + med["tv_encode"])
            row["sb_total_ms"] = 1000 * (network + med["sb_paste_encode"])
            row["postprocess_speedup"] = (med["tv_paste"] + med["tv_encode"]) / med["sb_paste_encode"]
        rows.append(row)
    return rows


def print_b(rows: list[dict], title: str) -> None:
    table = []
    for r in rows:
        ms = r["ms"]
        table.append(
            [
                r["image"][:14],
                f"{r['size'][0]}x{r['size'][1]}",
                r["detections"],
                ms["preprocess"],
                ms["backbone"],
                ms["rpn"],
                ms["roi_heads"],
                ms["tv_paste"],
                ms["tv_encode"],
                ms["sb_paste_encode"],
                r.get("postprocess_speedup"),
                None if r["identical_masks"] is None else f"{r['identical_masks']}/{r['detections']}",
            ]
        )
    C.print_table(
        [
            "image",
            "HxW",
            "dets",
            "prep ms",
            "backbone",
            "rpn",
            "roi+mask",
            "tv paste",
            "tv encode",
            "sb paste+enc",
            "tv/sb post",
            "same masks",
        ],
        table,
        title=title,
    )
    skipped = [r for r in rows if r["tv_paste_skipped"]]
    for r in skipped:
        print(f"  {r['image']}: torchvision paste skipped: {r['tv_paste_skipped']}")


def pick_dsb_images(root: Path, n: int):
    """Val images spanning the sizes: the first image of each distinct size, smallest first, ``n`` at most."""
    from segbench.data.coco import open_split

    coco = open_split(str(root), "val")
    by_size: dict[tuple[int, int], int] = {}
    for i in range(len(coco)):
        by_size.setdefault(coco.image_size(i), i)
    idx = [by_size[s] for s in sorted(by_size, key=lambda s: s[0] * s[1])]
    if n < len(idx):  # spread over the range, always keeping the largest
        import numpy as np

        idx = [idx[int(round(k))] for k in np.linspace(0, len(idx) - 1, n)]
    return [coco.load_image(i) for i in idx], [coco.images[i]["file_name"] for i in idx]


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None, help="synthetic images (default 16; quick 2)")
    p.add_argument("--image-size", type=int, default=None, help="synthetic size (default 192; quick 128)")
    p.add_argument("--batch-size", type=int, default=4, help="images per predict call (part A)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5; quick 1)")
    p.add_argument(
        "--dsb-images", type=int, default=None, help="dsb2018 val images, one per size (default 8; quick 1)"
    )
    p.add_argument(
        "--dsb-reps", type=int, default=None, help="timed repetitions per dsb2018 image (default 2; quick 1)"
    )
    p.add_argument("--dsb-root", type=Path, default=C.DSB2018)
    p.add_argument("--score-thresh", type=float, default=0.0, help="box_score_thresh of both models")
    p.add_argument(
        "--max-paste-gb",
        type=float,
        default=None,
        help="skip torchvision's paste when N*H*W*5 bytes exceed this (default: half the available memory)",
    )
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images or (2 if q else 16)
    args.image_size = args.image_size or (128 if q else 192)
    args.reps = args.reps or (1 if q else 5)
    args.dsb_images = args.dsb_images or (1 if q else 8)
    args.dsb_reps = args.dsb_reps or (1 if q else 2)
    warmup = 0 if q else 1
    C.quiet_logs()
    info = C.header(NAME, args)
    if args.max_paste_gb is None:
        import psutil

        max_paste = 0.5 * psutil.virtual_memory().available
    else:
        max_paste = args.max_paste_gb * 2**30

    import torch

    from segbench.data.synthetic import SynthConfig, make_image

    result: dict = {"skipped": []}
    targets = []

    # ---- synthetic ----
    cfg = SynthConfig(image_size=args.image_size)
    images = [make_image(i, cfg)[0] for i in range(args.images)]
    s = args.image_size
    model, net = build("synth_cpu", {"min_size": s, "max_size": s, "box_score_thresh": args.score_thresh})
    print(
        f"synthetic: {len(images)} images {s}x{s}; model {net['backbone']} (synth_cpu settings, untrained, "
        f"box_score_thresh={args.score_thresh}, box_detections_per_img={net['box_detections_per_img']}); "
        f"torch threads {torch.get_num_threads()}"
    )
    a = part_a(model, images, batch_size=args.batch_size, reps=args.reps, warmup=warmup)
    result["part_a"] = a
    C.print_table(
        ["path", "images/s", "ms/image", "segbench vs it"],
        [
            [
                "segbench predict_batch (RLE out)",
                a["images_per_s"]["segbench"],
                a["ms_per_image"]["segbench"],
                None,
            ],
            [
                "bare model(images) + masks>0.5",
                a["images_per_s"]["bare"],
                a["ms_per_image"]["bare"],
                a["ratio_vs_bare"],
            ],
            [
                "bare + masks_to_rles",
                a["images_per_s"]["bare+rle"],
                a["ms_per_image"]["bare+rle"],
                a["ratio_vs_bare_rle"],
            ],
            ["masks_to_rles alone", None, a["ms_per_image"]["rle_only"], None],
        ],
        title=f"A. throughput, {a['detections_per_image']:.0f} detections/image (median), batch {args.batch_size}",
    )
    print(
        f"RLE encoding (masks_to_rles alone) takes {100 * a['rle_share_of_bare_rle']:.2f}% of bare + RLE "
        f"({a['ms_per_image']['rle_only']:.2f} ms/image)"
    )
    targets.append(C.target("predict: segbench / bare forward+paste", a["ratio_vs_bare"], TARGET_RATIO))

    nb = 1 if q else min(4, len(images))
    rows_a = part_b(
        model,
        images[:nb],
        [f"synth_{i}" for i in range(nb)],
        reps=args.reps,
        warmup=warmup,
        max_paste_bytes=max_paste,
    )
    result["part_b_synthetic"] = rows_a
    print_b(rows_a, "B(a). latency split per image, synthetic, synth_cpu settings (ms, medians)")
    del model

    # ---- dsb2018 ----
    reason = C.dsb2018_reason(args.dsb_root)
    if reason:
        result["skipped"].append(C.skipped("B(b) dsb2018 latency split", reason))
    else:
        dimages, dnames = pick_dsb_images(args.dsb_root, args.dsb_images)
        dmodel, dnet = build("dsb2018_cpu", {"box_score_thresh": args.score_thresh, "_num_classes": 1})
        print(
            f"\ndsb2018: {len(dimages)} val images at native size; model {dnet['backbone']} (dsb2018_cpu settings: "
            f"keep_size={dnet['keep_size']}, box_detections_per_img={dnet['box_detections_per_img']}, "
            f"rpn_post_nms_top_n_test={dnet['rpn_post_nms_top_n_test']}; untrained, box_score_thresh="
            f"{args.score_thresh})"
        )
        rows_b = part_b(dmodel, dimages, dnames, reps=args.dsb_reps, warmup=warmup, max_paste_bytes=max_paste)
        result["part_b_dsb2018"] = rows_b
        print_b(rows_b, "B(b). latency split per image, dsb2018 val, native size (ms, medians)")
        sp = [r["postprocess_speedup"] for r in rows_b if r.get("postprocess_speedup")]
        if sp:
            print(
                f"mask post-processing, torchvision paste+encode / segbench paste_masks_to_rles: "
                f"median {C.median(sp):.2f}x, largest image {sp[-1]:.2f}x"
            )
    result["targets"] = targets
    C.print_targets(targets, quick=q)
    C.write_result(args.results_dir, NAME, result, quick=q, machine=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
