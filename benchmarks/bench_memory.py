"""Peak memory of one dsb2018 training item as the instance count grows: pre-cropped decode vs dense.

Cases: real dsb2018 train images picked by instance count (nearest to ``--counts``, default ~20, ~100 and
~375) among the images of one size (``--size``, default 520x696, the most common large size, so that only
the count changes), plus the image with the most instances overall (603x1272, 375 nuclei). For each case,
each of three fresh subprocesses imports segbench (torch included), indexes the train split, resets its
RSS high-water mark (``/proc/self/clear_refs``) and then builds the item; the peak comes from
``resource.getrusage(RUSAGE_SELF).ru_maxrss``:

* control: ``load_image`` + ``load_instances`` (RLE, nothing decoded): the part both ways share;
* segbench: ``TrainDataset(coco, max_crop=256)[i]`` (a random 256 px window chosen first; each mask
  decoded at full size one at a time and cropped);
* naive: every mask decoded densely at full size at once (``pycocotools.mask.decode(rles)``, N x H x W),
  then the same window cut out and the same tensors built.

Reported: the peak above the RSS before the item, and the masks' share (minus the control's). The claim
checked: segbench's peak stays flat as the instance count grows; "flat" is read as: its growth from the
fewest to the most instances is at most 10% of the naive way's growth (its own growth is bounded by the
cropped masks, about N x 256 x 256 bytes per copy). Skipped, with the reason, without ../shared/data/dsb2018.

    python benchmarks/bench_memory.py           # 4 cases, 12 subprocesses
    python benchmarks/bench_memory.py --quick   # 1 case
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import _common as C

NAME = "bench_memory"
FLAT_GROWTH = 0.10
MODES = ("control", "segbench", "naive")


def child(root: str, index: int, mode: str, max_crop: int, seed: int) -> None:
    """One measurement in a fresh process; prints a JSON line."""
    import gc
    import resource

    import numpy as np
    import torch
    from pycocotools import mask as mask_utils

    from segbench.data.coco import open_split
    from segbench.data.datamodule import TrainDataset, _random_window
    from segbench.types import masks_to_boxes

    coco = open_split(root, "train")
    gc.collect()
    # reset the high-water mark to the current RSS (Linux >= 4.0): the import peak no longer counts
    reset = C.reset_peak_rss()
    rss0 = C.status_kb("VmRSS")
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm0 = C.status_kb("VmHWM")
    # a child's ru_maxrss also holds its parent's peak at fork time; that hides ours if it is higher
    masked = bool(reset and hwm0 is not None and max0 > hwm0 + 1024)
    torch.manual_seed(seed)
    n = None
    if mode == "control":
        image = coco.load_image(index)
        inst = coco.load_instances(index)
        n = len(inst)
    elif mode == "segbench":
        ds = TrainDataset(coco, None, max_crop=max_crop)
        image, target = ds[index]
        n = len(target["masks"])
    elif mode == "naive":
        # the same window TrainDataset would draw for this seed
        item_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        image = coco.load_image(index)
        h, w = image.shape[:2]
        inst = coco.load_instances(index)
        rles = [r for r, c in zip(inst.rles, inst.iscrowd, strict=True) if not c]
        dense = mask_utils.decode(rles)  # (H, W, N) uint8: every mask at full size
        y0, x0, ch, cw = _random_window(h, w, max_crop, np.random.default_rng(item_seed))
        masks = np.ascontiguousarray(dense[y0 : y0 + ch, x0 : x0 + cw].transpose(2, 0, 1))
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        keep = masks.reshape(len(masks), -1).sum(axis=1) >= 4
        masks = masks[keep]
        boxes = masks_to_boxes(masks.astype(bool))
        target = {"boxes": torch.from_numpy(boxes), "masks": torch.from_numpy(masks)}
        img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        n = len(masks)
        del img_t
    else:
        raise SystemExit(f"unknown mode {mode}")
    max1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm1 = C.status_kb("VmHWM")
    if reset and not masked:
        peak, source = max1 - rss0, "ru_maxrss"
    elif reset:
        peak, source = hwm1 - rss0, "VmHWM (ru_maxrss held the parent's peak)"
    else:
        peak, source = max1 - max0, "ru_maxrss without reset (growth above the import peak only)"
    print(
        json.dumps(
            {
                "mode": mode,
                "reset": reset,
                "source": source,
                "rss_before_kb": rss0,
                "maxrss_before_kb": max0,
                "maxrss_after_kb": max1,
                "vmhwm_after_kb": hwm1,
                "peak_above_before_kb": peak,
                "instances_in_item": n,
            }
        )
    )


def run_child(root: Path, index: int, mode: str, max_crop: int, seed: int) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_child",
        str(root),
        str(index),
        mode,
        str(max_crop),
        str(seed),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"child {mode} for image {index} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def pick_cases(root: Path, counts: list[int], size: tuple[int, int], include_max: bool) -> list[dict]:
    """Train images nearest to each count among images of ``size``; plus the most crowded image."""
    doc = json.loads((root / "annotations" / "instances_train.json").read_text())
    per: dict = {}
    for a in doc["annotations"]:
        if not a.get("iscrowd", 0):
            per[a["image_id"]] = per.get(a["image_id"], 0) + 1
    order = {im["id"]: k for k, im in enumerate(doc["images"])}
    info = [
        {
            "index": order[im["id"]],
            "file_name": im["file_name"],
            "size": [im["height"], im["width"]],
            "instances": per.get(im["id"], 0),
        }
        for im in doc["images"]
    ]
    same = [d for d in info if tuple(d["size"]) == size] or info
    cases: list[dict] = []
    for c in counts:
        best = min(same, key=lambda d: (abs(d["instances"] - c), d["index"]))
        if best not in cases:
            cases.append(best)
    if include_max:
        top = max(info, key=lambda d: (d["instances"], -d["index"]))
        if top not in cases:
            cases.append(top)
    return sorted(cases, key=lambda d: (d["instances"], d["size"][0] * d["size"][1]))


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_child":
        _, _, root, index, mode, max_crop, seed = sys.argv
        child(root, int(index), mode, int(max_crop), int(seed))
        return 0
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--counts", type=int, nargs="+", default=None, help="instance counts (default 20 100 375; quick 20)"
    )
    p.add_argument("--size", default="520x696", help="HxW of the images the counts are picked from")
    p.add_argument("--no-max", action="store_true", help="leave out the image with the most instances")
    p.add_argument("--max-crop", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dsb-root", type=Path, default=C.DSB2018)
    args = p.parse_args(argv)
    q = args.quick
    args.counts = args.counts or ([20] if q else [20, 100, 375])
    include_max = not (q or args.no_max)
    C.quiet_logs()
    info = C.header(NAME, args, light=True)  # a light parent: children's ru_maxrss starts at its peak
    result: dict = {"skipped": [], "targets": []}
    reason = C.dsb2018_reason(args.dsb_root)
    if reason:
        result["skipped"].append(C.skipped("training-item memory on dsb2018", reason))
        C.write_result(args.results_dir, NAME, result, quick=q, machine=info)
        return 0
    h, w = (int(v) for v in args.size.lower().split("x"))
    cases = pick_cases(args.dsb_root, args.counts, (h, w), include_max)
    print(
        f"{len(cases)} case(s), max_crop={args.max_crop}, seed {args.seed}; one fresh subprocess per "
        f"measurement ({len(cases) * len(MODES)} in all)"
    )
    rows = []
    for case in cases:
        got = {m: run_child(args.dsb_root, case["index"], m, args.max_crop, args.seed) for m in MODES}
        peak = {m: got[m]["peak_above_before_kb"] / 1024 for m in MODES}
        row = {
            **case,
            "runs": got,
            "peak_mib": peak,
            "masks_mib": {m: peak[m] - peak["control"] for m in ("segbench", "naive")},
            "dense_full_size_mib": case["instances"] * case["size"][0] * case["size"][1] / 2**20,
            "cropped_mib": case["instances"]
            * min(args.max_crop, case["size"][0])
            * min(args.max_crop, case["size"][1])
            / 2**20,
        }
        rows.append(row)
    sources = sorted({r["runs"][m]["source"] for r in rows for m in MODES})
    print(f"peak measured with: {'; '.join(sources)}")
    C.print_table(
        [
            "image",
            "HxW",
            "instances",
            "control MiB",
            "segbench MiB",
            "naive MiB",
            "segbench masks",
            "naive masks",
            "naive/segbench",
            "N*H*W MiB",
            "N*256^2 MiB",
        ],
        [
            [
                r["file_name"][:12],
                f"{r['size'][0]}x{r['size'][1]}",
                r["instances"],
                r["peak_mib"]["control"],
                r["peak_mib"]["segbench"],
                r["peak_mib"]["naive"],
                r["masks_mib"]["segbench"],
                r["masks_mib"]["naive"],
                r["peak_mib"]["naive"] / max(r["peak_mib"]["segbench"], 1e-9),
                r["dense_full_size_mib"],
                r["cropped_mib"],
            ]
            for r in rows
        ],
        title="peak RSS above the RSS before the item (ru_maxrss, fresh process each; masks = minus control)",
    )
    targets = []
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        g_sb = hi["peak_mib"]["segbench"] - lo["peak_mib"]["segbench"]
        g_nv = hi["peak_mib"]["naive"] - lo["peak_mib"]["naive"]
        dn = max(hi["instances"] - lo["instances"], 1)
        growth = g_sb / g_nv if g_nv > 0 else None
        print(
            f"from {lo['instances']} to {hi['instances']} instances: segbench peak +{g_sb:.1f} MiB "
            f"({1024 * g_sb / dn:.0f} KiB/instance), naive +{g_nv:.1f} MiB ({1024 * g_nv / dn:.0f} KiB/instance)"
        )
        result["growth"] = {
            "segbench_mib": g_sb,
            "naive_mib": g_nv,
            "ratio": growth,
            "instances": [lo["instances"], hi["instances"]],
        }
        targets.append(
            C.target("memory: segbench / naive peak growth", growth, FLAT_GROWTH, op="<=", unit="")
        )
    else:
        print("one case only: no growth to compare (the full run has several)")
    C.print_targets(targets, quick=q)
    result["cases"] = rows
    result["settings"] = {"counts": args.counts, "size": [h, w], "max_crop": args.max_crop, "seed": args.seed}
    result["targets"] = targets
    C.write_result(args.results_dir, NAME, result, quick=q, machine=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
