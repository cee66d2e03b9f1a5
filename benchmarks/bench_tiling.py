"""Large images whole vs by tiles (segbench.tiling): time and peak memory, side by side in one run.

The image: ``--size`` x ``--size`` px (default 4000), a mosaic of the synthetic dataset's 192 px images
(``segbench data synth``'s images ``0, 1, 2...`` row by row: small objects of its shape classes on
textured backgrounds, the same in every run), and its ground truth (the images' masks, shifted). Each row
runs in a fresh subprocess (``--reps`` times, the rows alternated): the child makes the image, builds the
segmenter, warms it up on a 256 px crop, resets its RSS high-water mark (``/proc/self/clear_refs``), then
times one call ``image -> Instances`` plus the RLE encoding of the masks (what ``predict`` / ``eval`` do
next). The memory is the peak RSS of that call above the RSS before it (``VmHWM``), and the child's
whole-process peak (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, imports included).

Rows, per baseline (``--baselines``, default threshold and sobel, unfitted, default options: at most
``max_instances=100`` instances per call, i.e. per image when whole and per tile when tiled):

* ``whole``: the baseline on the whole image (its masks are dense, ``N x H x W`` bool);
* ``tile=auto``: :func:`segbench.tiling.tiled` with ``tile="auto"`` (above 2048 x 2048 px: 1024 px
  tiles, overlap 128 px);
* ``tile=512``: 512 px tiles, overlap 64 px.

With ``--ckpt CKPT`` (a segbench checkpoint), also the model: ``whole`` (resized by the model to its test
scale) and ``tile=auto`` (tiles of its ``min_size``, run at native resolution, 4 tiles per network call),
keeping the detections with score >= 0.5 as ``predict`` does by default (``--model-reps``, default 1: a
4000 px image is 576 tiles of 192 px for an ``experiment=synth_cpu`` model).
Reported besides: the instances found, and how many ground-truth objects each row finds (an object is
found when an instance covers it with mask IoU >= 0.5, whatever the class).

    python benchmarks/bench_tiling.py                 # 4000 px, threshold + sobel, 2 reps
    python benchmarks/bench_tiling.py --ckpt CKPT     # and the model (e.g. an experiment=synth_cpu checkpoint)
    python benchmarks/bench_tiling.py --quick         # 1000 px, 1 rep
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

NAME = "bench_tiling"
#: (label, tile, overlap) of the rows.
MODES = (("whole", None, None), ("tile=auto", "auto", None), ("tile=512", 512, 64))
MODEL_MODES = (("whole", None, None), ("tile=auto", "auto", None))


def make_image(size: int, seed: int, *, truth: bool = False):
    """The ``(size, size, 3) uint8`` mosaic and (with ``truth``) its objects as whole-image RLEs."""
    import numpy as np

    from segbench.data.synthetic import SynthConfig
    from segbench.data.synthetic import make_image as synth_image
    from segbench.tiling import tile_mask_to_rle

    cfg = SynthConfig(seed=seed)
    s = cfg.image_size
    img = np.zeros((size, size, 3), np.uint8)
    rles = []
    cells = -(-size // s)
    for k in range(cells * cells):
        y, x = (k // cells) * s, (k % cells) * s
        im, masks, _ = synth_image(k, cfg)
        h, w = min(s, size - y), min(s, size - x)
        img[y : y + h, x : x + w] = im[:h, :w]
        if truth:
            rles += [
                tile_mask_to_rle(m[:h, :w], offset=(y, x), image_size=(size, size))
                for m in masks
                if m[:h, :w].sum() >= 25
            ]
    return img, rles


def child(spec: dict) -> None:
    """One measurement in a fresh process; prints a JSON line, writes the RLEs to ``spec["out"]``."""
    import gc
    import resource

    from segbench.tiling import tile_grid, tiled

    image, _ = make_image(spec["size"], spec["seed"])
    size = None
    if spec["method"] == "maskrcnn":
        from segbench.models.checkpoint import build_kwargs
        from segbench.models.segmenter import MaskRCNNSegmenter
        from segbench.tiling import model_size

        seg, card = MaskRCNNSegmenter.from_checkpoint(spec["ckpt"])
        seg.score_threshold = 0.5  # predict's default: no mask for a box that is then dropped
        size = model_size(build_kwargs(card))
    else:
        from segbench.baselines import build_baseline

        seg = build_baseline(spec["method"])
    tiles = None
    if spec["tile"] is not None:
        seg = tiled(seg, tile=spec["tile"], overlap=spec["overlap"], model_size=size, tiles_per_call=4)
        side = seg.tile_for(*image.shape[:2])
        if side is not None:
            tiles = [side, len(tile_grid(*image.shape[:2], tile=side, overlap=seg.overlap))]
    seg(image[:256, :256].copy())  # lazy imports and first-call costs are not the measurement
    gc.collect()
    reset = C.reset_peak_rss()
    rss0 = C.status_kb("VmRSS")
    t0 = time.perf_counter()
    inst = seg(image)
    rles = inst.get_rles()
    seconds = time.perf_counter() - t0
    hwm = C.status_kb("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(spec["out"]).write_text(json.dumps([{"size": r["size"], "counts": r["counts"]} for r in rles]))
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": (hwm - rss0) / 1024 if reset and hwm and rss0 else None,
                "process_peak_mb": maxrss / 1024,
                "instances": len(inst),
                "tiles": tiles,
            }
        )
    )


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"child {spec['method']} {spec['tile']} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def found_objects(rles_file: Path, truth: list[dict]) -> int:
    """How many ground-truth objects an instance covers with mask IoU >= 0.5."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rles = json.loads(rles_file.read_text())
    if not rles or not truth:
        return 0
    iou = np.asarray(mask_utils.iou(rles, truth, [0] * len(truth))).reshape(len(rles), len(truth))
    return int((iou.max(axis=0) >= 0.5).sum())


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--_child":
        child(json.loads(sys.argv[2]))
        return 0
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="image side in px (default 4000; quick 1000)")
    p.add_argument("--baselines", nargs="+", default=["threshold", "sobel"])
    p.add_argument("--ckpt", type=Path, default=None, help="a segbench checkpoint: also the model")
    p.add_argument("--reps", type=int, default=None, help="fresh subprocesses per row (default 2; quick 1)")
    p.add_argument("--model-reps", type=int, default=1, help="fresh subprocesses per model row (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    size = args.size or (1000 if q else 4000)
    reps = args.reps or (1 if q else 2)
    C.quiet_logs()
    info = C.header(NAME, args, light=True)  # a light parent: a child's ru_maxrss starts at its peak
    _, truth = make_image(size, args.seed, truth=True)
    print(
        f"{size} x {size} px: a mosaic of 192 px synthetic images with {len(truth)} objects; "
        f"{reps} fresh subprocess(es) per row"
    )
    rows_spec = [(b, label, tile, ov) for b in args.baselines for label, tile, ov in MODES]
    if args.ckpt is not None:
        rows_spec += [("maskrcnn", label, tile, ov) for label, tile, ov in MODEL_MODES]
    result: dict = {"size": size, "objects": len(truth), "reps": reps, "rows": [], "skipped": []}
    if args.ckpt is None:
        result["skipped"].append(C.skipped("the model rows", "no --ckpt given"))
    runs: dict[int, list[dict]] = {k: [] for k in range(len(rows_spec))}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            order = range(len(rows_spec)) if rep % 2 == 0 else reversed(range(len(rows_spec)))
            for k in order:
                method, label, tile, overlap = rows_spec[k]
                if method == "maskrcnn" and rep >= args.model_reps:
                    continue
                out = Path(tmp) / f"{k}_{rep}.json"
                spec = {
                    "method": method,
                    "tile": tile,
                    "overlap": overlap,
                    "size": size,
                    "seed": args.seed,
                    "ckpt": str(args.ckpt) if args.ckpt else None,
                    "out": str(out),
                }
                got = run_child(spec)
                if rep == 0:
                    got["found"] = found_objects(out, truth)
                runs[k].append(got)
                print(f"  {method} {label}: {got['seconds']:.2f} s, peak {got['peak_mb']:.0f} MB", flush=True)
    table = []
    for k, (method, label, _tile, _ov) in enumerate(rows_spec):
        got = runs[k]
        whole = runs[next(j for j, r in enumerate(rows_spec) if r[0] == method and r[1] == "whole")]
        secs = C.median([g["seconds"] for g in got])
        peak = max((g["peak_mb"] for g in got if g["peak_mb"] is not None), default=None)
        whole_peak = max((g["peak_mb"] for g in whole if g["peak_mb"] is not None), default=None)
        tiles = got[0]["tiles"]
        row = {
            "method": method,
            "mode": label,
            "tiles": "-" if not tiles else f"{tiles[1]} x {tiles[0]} px",
            "seconds": secs,
            "time_vs_whole": secs / C.median([g["seconds"] for g in whole]),
            "peak_mb": peak,
            "peak_vs_whole": peak / whole_peak if peak is not None and whole_peak else None,
            "process_peak_mb": max(g["process_peak_mb"] for g in got),
            "instances": got[0]["instances"],
            "objects_found": f"{got[0]['found']} / {len(truth)}",
        }
        result["rows"].append(row)
        table.append(list(row.values()))
    C.print_table(
        [
            "method",
            "mode",
            "tiles",
            "s/image",
            "time / whole",
            "peak MB (call)",
            "peak / whole",
            "process peak MB",
            "instances",
            "objects found",
        ],
        table,
        title=f"whole image vs tiles, {size} x {size} px, {len(truth)} objects (median of {reps} fresh processes; "
        f"the model: {args.model_reps})",
    )
    C.write_result(args.results_dir, NAME, result, quick=q, machine=info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
