"""COCO mask AP: segbench's ``coco_evaluate`` (faster-coco-eval backend) against plain pycocotools.

The data is made directly as RLE with numpy (no image files): ``--images`` images of 64x64 pixels, 1 to 5
discs each (radius 3 to 20 px, so small and medium COCO areas; 2 categories; about 2% crowd regions);
predictions are the discs jittered in centre and radius (85% of the objects are found, 10% of those with
the wrong category) plus 0 to 2 false positives per image, all with random scores.

* segbench: ``segbench.eval.metrics.coco_evaluate(gt, results, iou_type="segm", backend="faster_coco_eval")``
  (its own copies of the inputs included);
* pycocotools: ``COCO`` from the dict + ``loadRes`` + ``COCOeval(segm)`` ``evaluate`` + ``accumulate`` +
  ``summarize``, on copies made outside the timed region.

The 9 summary numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100) must be identical (to 1e-12);
target: segbench >= 3x faster. Runs alternate; the median of ``--reps`` runs per side is reported.

    python benchmarks/bench_eval.py           # 5,000 images
    python benchmarks/bench_eval.py --quick   # 300 images
"""

from __future__ import annotations

import contextlib
import copy
import io
import time

import _common as C

NAME = "bench_eval"
TARGET_SPEEDUP = 3.0
TOLERANCE = 1e-12
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def make_data(n_images: int, *, size: int = 64, seed: int = 0) -> tuple[dict, list[dict]]:
    import numpy as np
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def discs(cy, cx, r):
        m = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2 <= (r**2)[:, None, None]
        return mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))

    images, anns, results = [], [], []
    aid = 1
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:06d}.png", "height": size, "width": size})
        k = int(rng.integers(1, 6))
        cy, cx = rng.uniform(4, size - 4, (2, k)).astype(np.float32)
        r = rng.uniform(3, 20, k).astype(np.float32)
        cat = rng.integers(1, 3, k)
        crowd = rng.random(k) < 0.02
        rles = discs(cy, cx, r)
        areas, boxes = mask_utils.area(rles), mask_utils.toBbox(rles)
        for j, rle in enumerate(rles):
            anns.append(
                {
                    "id": aid,
                    "image_id": i,
                    "category_id": int(cat[j]),
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                    "area": float(areas[j]),
                    "bbox": [float(v) for v in boxes[j]],
                    "iscrowd": int(crowd[j]),
                }
            )
            aid += 1
        found = rng.random(k) < 0.85
        n_fp = int(rng.integers(0, 3))
        pcy = np.concatenate([cy[found] + rng.normal(0, 1.5, found.sum()), rng.uniform(4, size - 4, n_fp)])
        pcx = np.concatenate([cx[found] + rng.normal(0, 1.5, found.sum()), rng.uniform(4, size - 4, n_fp)])
        pr = np.concatenate([r[found] * rng.uniform(0.8, 1.2, found.sum()), rng.uniform(3, 20, n_fp)])
        pcat = np.concatenate(
            [np.where(rng.random(found.sum()) < 0.9, cat[found], 3 - cat[found]), rng.integers(1, 3, n_fp)]
        )
        if len(pr):
            for j, rle in enumerate(
                discs(pcy.astype(np.float32), pcx.astype(np.float32), pr.astype(np.float32))
            ):
                results.append(
                    {
                        "image_id": i,
                        "category_id": int(pcat[j]),
                        "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                        "score": float(rng.random()),
                    }
                )
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    return gt, results


def run_segbench(gt, results) -> tuple[list[float], float]:
    from segbench.eval.metrics import coco_evaluate

    t0 = time.perf_counter()
    s = coco_evaluate(gt, results, iou_type="segm", backend="faster_coco_eval")
    dt = time.perf_counter() - t0
    return [-1.0 if s[k] is None else float(s[k]) for k in KEYS], dt


def run_pycocotools(gt, results) -> tuple[list[float], float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = copy.deepcopy(gt), copy.deepcopy(results)  # loadRes / evaluate write into their inputs
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        cd = cg.loadRes(results)
        E = COCOeval(cg, cd, "segm")
        E.evaluate()
        E.accumulate()
        E.summarize()
        dt = time.perf_counter() - t0
    return [float(v) for v in E.stats[: len(KEYS)]], dt


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None, help="images (default 5000; quick 300)")
    p.add_argument("--reps", type=int, default=None, help="runs per side (default 3; quick 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images or (300 if q else 5000)
    args.reps = args.reps or (2 if q else 3)
    C.quiet_logs()
    info = C.header(NAME, args)

    t0 = time.perf_counter()
    gt, results = make_data(args.images, seed=args.seed)
    print(
        f"data: {args.images} images 64x64, {len(gt['annotations'])} ground-truth objects "
        f"({sum(a['iscrowd'] for a in gt['annotations'])} crowd), {len(results)} detections; "
        f"made in {time.perf_counter() - t0:.1f} s"
    )
    # warm-up (imports, first-call costs) on a small slice
    wgt, wres = make_data(20, seed=args.seed + 1)
    run_segbench(wgt, wres)
    run_pycocotools(wgt, wres)

    sb_t, pc_t = [], []
    sb_stats = pc_stats = None
    for r in range(args.reps):
        order = ("segbench", "pycocotools") if r % 2 == 0 else ("pycocotools", "segbench")
        for side in order:
            if side == "segbench":
                sb_stats, dt = run_segbench(gt, results)
                sb_t.append(dt)
            else:
                pc_stats, dt = run_pycocotools(gt, results)
                pc_t.append(dt)
        print(f"run {r + 1}/{args.reps}: segbench {sb_t[-1]:.2f} s, pycocotools {pc_t[-1]:.2f} s")

    diffs = [abs(a - b) for a, b in zip(sb_stats, pc_stats, strict=True)]
    max_diff = max(diffs)
    C.print_table(
        ["stat", "segbench (faster_coco_eval)", "pycocotools", "|diff|"],
        [[k, a, b, d] for k, a, b, d in zip(KEYS, sb_stats, pc_stats, diffs, strict=True)],
        title="summary numbers (-1: nothing to score)",
    )
    t_sb, t_pc = C.median(sb_t), C.median(pc_t)
    speedup = t_pc / t_sb
    C.print_table(
        ["path", "median s", "images/s", "speed-up"],
        [
            ["segbench coco_evaluate (faster_coco_eval)", t_sb, args.images / t_sb, speedup],
            ["pycocotools loadRes+evaluate+accumulate+summarize", t_pc, args.images / t_pc, 1.0],
        ],
        title=f"COCO segm evaluation of {args.images} images",
    )
    identical = max_diff <= TOLERANCE
    print(f"stats identical to {TOLERANCE:g}: {identical} (largest difference {max_diff:.3g})")
    targets = [
        C.target("eval: stats |segbench - pycocotools|", max_diff, TOLERANCE, op="<=", unit=""),
        C.target("eval: segbench speed-up vs pycocotools", speedup, TARGET_SPEEDUP),
    ]
    C.print_targets(targets, quick=q)
    C.write_result(
        args.results_dir,
        NAME,
        {
            "settings": {"images": args.images, "reps": args.reps, "seed": args.seed},
            "counts": {"gt": len(gt["annotations"]), "detections": len(results)},
            "stats": {"keys": KEYS, "segbench": sb_stats, "pycocotools": pc_stats, "max_abs_diff": max_diff},
            "seconds": {"segbench": sb_t, "pycocotools": pc_t},
            "speedup": speedup,
            "targets": targets,
            "skipped": [],
        },
        quick=q,
        machine=info,
    )
    if not identical:
        print("ERROR: the two evaluations disagree")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
