"""COCO indexing cost and per-item load time of segbench's data layer.

Part 1 — indexing: a COCO JSON with ``--annotations`` polygon annotations (default 100,000: 2,000 images of
640x480 with 50 polygons of 16 vertices each, 3 categories) is written to a temp dir; ``CocoDataset(json)``
is timed (median of ``--reps``; JSON parsing included, and reported apart), and its memory measured in a
fresh subprocess each: the tracemalloc peak (Python allocations) and the RSS delta (``psutil``: RSS after
minus before, with the dataset alive; and the peak RSS above the start: ``VmHWM`` after a reset of the
high-water mark). Every timed run counts calls of the mask decoders (``decode_annotation`` and
pycocotools' ``frPyObjects`` / ``decode`` / ``merge`` / ``area`` as used by ``segbench.data.coco`` and
``segbench.data.annotations``) and asserts that indexing made none; then one ``load_instances`` call shows
the counter does count.

Part 2 — per-item load on dsb2018 train images (skipped, with the reason, without ../shared/data/dsb2018):
``load_image`` + ``load_instances`` + dense decode (``Instances.get_masks()``), page cache warmed by an
untimed pass; median and max over ``--items`` images spread over the split, and the ``--top`` images with
the most instances.

    python benchmarks/bench_data.py           # 100,000 annotations, 50 dsb2018 items
    python benchmarks/bench_data.py --quick   # 2,000 annotations, 5 items
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

NAME = "bench_data"


def write_coco(
    path: Path, n_ann: int, *, per_image: int = 50, h: int = 480, w: int = 640, seed: int = 0
) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    n_images = max(1, -(-n_ann // per_image))
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    images, anns = [], []
    aid = 1
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"img_{i:06d}.jpg", "height": h, "width": w})
        k = min(per_image, n_ann - len(anns))
        cx, cy = rng.uniform(20, w - 20, k), rng.uniform(20, h - 20, k)
        r = rng.uniform(5, 40, k)
        cat = rng.integers(1, 4, k)
        for j in range(k):
            xs = np.clip(cx[j] + r[j] * np.cos(ang), 0, w)
            ys = np.clip(cy[j] + r[j] * np.sin(ang), 0, h)
            poly = np.round(np.stack([xs, ys], 1).reshape(-1), 1).tolist()
            x0, y0 = float(xs.min()), float(ys.min())
            anns.append(
                {
                    "id": aid,
                    "image_id": i,
                    "category_id": int(cat[j]),
                    "segmentation": [poly],
                    "area": float(np.pi * r[j] ** 2),
                    "bbox": [x0, y0, float(xs.max()) - x0, float(ys.max()) - y0],
                    "iscrowd": 0,
                }
            )
            aid += 1
    doc = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)],
    }
    path.write_text(json.dumps(doc))
    return {"images": n_images, "annotations": len(anns), "bytes": path.stat().st_size}


class DecodeCounter:
    """Counts calls of the mask decoders ``segbench.data.coco`` and the rulebook it calls
    (``segbench.data.annotations``) use, while installed."""

    NAMES = ("frPyObjects", "decode", "merge", "area", "encode", "toBbox")

    def __init__(self):
        self.calls: dict[str, int] = {}

    def __enter__(self):
        import segbench.data.annotations as ann_mod
        import segbench.data.coco as coco_mod

        self._mod, self._ann_mod = coco_mod, ann_mod
        self._orig_decode_annotation = coco_mod.decode_annotation
        self._orig_mask_utils = coco_mod.mask_utils
        counter = self
        real = self._orig_mask_utils

        def counted(name, fn):
            def wrapper(*a, **k):
                counter.calls[name] = counter.calls.get(name, 0) + 1
                return fn(*a, **k)

            return wrapper

        class Proxy:
            def __getattr__(self, name):
                attr = getattr(real, name)
                return counted(f"mask_utils.{name}", attr) if name in DecodeCounter.NAMES else attr

        coco_mod.mask_utils = ann_mod.mask_utils = Proxy()
        coco_mod.decode_annotation = counted("decode_annotation", self._orig_decode_annotation)
        return self

    def __exit__(self, *exc):
        self._mod.mask_utils = self._ann_mod.mask_utils = self._orig_mask_utils
        self._mod.decode_annotation = self._orig_decode_annotation

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def child_memory(path: str, mode: str) -> None:
    """Fresh process: index ``path`` once and print the memory numbers as JSON."""
    import gc

    import psutil

    from segbench.data.coco import CocoDataset

    gc.collect()
    proc = psutil.Process()
    out: dict = {}
    if mode == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
        ds = CocoDataset(path)
        cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.update(tracemalloc_peak=peak, tracemalloc_current=cur)
    else:
        out["hwm_reset"] = C.reset_peak_rss()  # the high-water mark := current RSS (import peak gone)
        rss0 = proc.memory_info().rss
        ds = CocoDataset(path)
        hwm1 = C.status_kb("VmHWM")
        gc.collect()
        out.update(
            rss_delta=proc.memory_info().rss - rss0,
            # peak RSS while indexing, above the RSS before (VmHWM: this process's own high-water mark;
            # ru_maxrss would also hold the parent's peak at fork time)
            peak_delta=(hwm1 * 1024 - rss0) if out["hwm_reset"] and hwm1 is not None else None,
        )
    out["annotations"] = ds.num_annotations
    print(json.dumps(out))


def run_child(path: Path, mode: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", str(path), mode]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"memory child ({mode}) failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def part_index(args) -> dict:
    from segbench.data.coco import CocoDataset

    with tempfile.TemporaryDirectory(prefix="segbench-bench-data-") as tmp:
        path = Path(tmp) / "annotations" / "instances_train.json"
        path.parent.mkdir()
        t0 = time.perf_counter()
        meta = write_coco(path, args.annotations)
        print(
            f"\nindexing: {meta['annotations']:,} polygon annotations on {meta['images']:,} images, JSON "
            f"{meta['bytes'] / 2**20:.1f} MiB (written in {time.perf_counter() - t0:.1f} s)"
        )
        json_s = C.median(C.timeit(lambda: json.loads(path.read_text()), reps=args.reps, warmup=0))
        times, decodes = [], []
        for _ in range(args.reps):
            with DecodeCounter() as counter:
                t0 = time.perf_counter()
                ds = CocoDataset(path)
                times.append(time.perf_counter() - t0)
            decodes.append(dict(counter.calls))
            if counter.total:
                raise AssertionError(f"CocoDataset decoded masks while indexing: {counter.calls}")
        assert ds.num_annotations == meta["annotations"], (ds.num_annotations, meta)
        with DecodeCounter() as probe:  # the counter does see decoding when it happens
            ds.load_instances(0)
        if probe.total == 0:
            raise AssertionError("the decode counter saw nothing in load_instances: the check is broken")
        del ds
        mem_rss = run_child(path, "rss")
        mem_tm = run_child(path, "tracemalloc")
    t = C.median(times)
    C.print_table(
        ["measure", "value"],
        [
            ["CocoDataset(json) s (median)", t],
            ["  of which json.load s", json_s],
            ["annotations / s", meta["annotations"] / t],
            ["tracemalloc peak MiB", mem_tm["tracemalloc_peak"] / 2**20],
            ["tracemalloc after MiB (dataset alive)", mem_tm["tracemalloc_current"] / 2**20],
            ["RSS delta MiB (dataset alive)", mem_rss["rss_delta"] / 2**20],
            [
                "peak RSS above start MiB (VmHWM)",
                None if mem_rss["peak_delta"] is None else mem_rss["peak_delta"] / 2**20,
            ],
            ["masks decoded while indexing", 0],
            ["decoder calls seen by one load_instances", probe.total],
        ],
        title=f"indexing {meta['annotations']:,} annotations",
    )
    return {
        **meta,
        "seconds": times,
        "json_load_s": json_s,
        "memory": {**mem_rss, **mem_tm},
        "decoder_calls_while_indexing": decodes,
        "decoder_calls_one_load_instances": probe.calls,
    }


def part_items(args) -> dict:
    import numpy as np

    from segbench.data.coco import open_split

    coco = open_split(str(args.dsb_root), "train")
    counts = [len(coco.annotations(i)) for i in range(len(coco))]
    n = min(args.items, len(coco))
    spread = sorted({int(round(k)) for k in np.linspace(0, len(coco) - 1, n)})
    top = sorted(range(len(coco)), key=lambda i: -counts[i])[: args.top]

    def load(i):
        t0 = time.perf_counter()
        coco.load_image(i)
        t1 = time.perf_counter()
        inst = coco.load_instances(i)
        t2 = time.perf_counter()
        masks = inst.get_masks()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, masks.nbytes

    def measure(indices):
        for i in indices:  # untimed: warms the page cache
            load(i)
        rows = []
        for i in indices:
            runs = [load(i) for _ in range(args.item_reps)]
            img, ins, dec = (C.median([r[k] for r in runs]) for k in range(3))
            rows.append(
                {
                    "index": i,
                    "file_name": coco.images[i]["file_name"],
                    "size": list(coco.image_size(i)),
                    "instances": counts[i],
                    "image_ms": 1000 * img,
                    "instances_ms": 1000 * ins,
                    "dense_ms": 1000 * dec,
                    "total_ms": 1000 * (img + ins + dec),
                    "dense_bytes": runs[0][3],
                }
            )
        return rows

    spread_rows, top_rows = measure(spread), measure(top)
    tot = [r["total_ms"] for r in spread_rows]
    summary = [
        [
            f"{len(spread_rows)} images spread over train",
            "median",
            round(C.median([r["instances"] for r in spread_rows])),
            C.median([r["image_ms"] for r in spread_rows]),
            C.median([r["instances_ms"] for r in spread_rows]),
            C.median([r["dense_ms"] for r in spread_rows]),
            C.median(tot),
        ],
        [
            "",
            "max",
            max(r["instances"] for r in spread_rows),
            max(r["image_ms"] for r in spread_rows),
            max(r["instances_ms"] for r in spread_rows),
            max(r["dense_ms"] for r in spread_rows),
            max(tot),
        ],
    ]
    C.print_table(
        ["items", "stat", "instances", "load_image ms", "load_instances ms", "dense decode ms", "total ms"],
        summary,
        title=f"per-item load, dsb2018 train ({args.item_reps} run(s) per item, warm page cache)",
    )
    C.print_table(
        [
            "image",
            "HxW",
            "instances",
            "load_image ms",
            "load_instances ms",
            "dense decode ms",
            "total ms",
            "dense MiB",
        ],
        [
            [
                r["file_name"][:14],
                f"{r['size'][0]}x{r['size'][1]}",
                r["instances"],
                r["image_ms"],
                r["instances_ms"],
                r["dense_ms"],
                r["total_ms"],
                r["dense_bytes"] / 2**20,
            ]
            for r in top_rows
        ],
        title=f"the {len(top_rows)} train images with the most instances",
    )
    return {
        "spread": spread_rows,
        "top": top_rows,
        "median_total_ms": C.median(tot),
        "max_total_ms": max(tot),
        "top_median_total_ms": C.median([r["total_ms"] for r in top_rows]),
        "top_max_total_ms": max(r["total_ms"] for r in top_rows),
    }


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_child":
        child_memory(sys.argv[2], sys.argv[3])
        return 0
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--annotations", type=int, default=None, help="annotations to index (default 100000; quick 2000)"
    )
    p.add_argument("--reps", type=int, default=None, help="indexing runs (default 3; quick 1)")
    p.add_argument("--items", type=int, default=None, help="dsb2018 train items (default 50; quick 5)")
    p.add_argument(
        "--top", type=int, default=None, help="images with the most instances (default 5; quick 2)"
    )
    p.add_argument("--item-reps", type=int, default=None, help="timed loads per item (default 3; quick 1)")
    p.add_argument("--dsb-root", type=Path, default=C.DSB2018)
    args = p.parse_args(argv)
    q = args.quick
    args.annotations = args.annotations or (2000 if q else 100_000)
    args.reps = args.reps or (1 if q else 3)
    args.items = args.items or (5 if q else 50)
    args.top = args.top or (2 if q else 5)
    args.item_reps = args.item_reps or (1 if q else 3)
    C.quiet_logs()
    info = C.header(NAME, args, light=True)
    result: dict = {"skipped": [], "targets": []}
    result["index"] = part_index(args)
    reason = C.dsb2018_reason(args.dsb_root)
    if reason:
        result["skipped"].append(C.skipped("per-item load on dsb2018", reason))
    else:
        result["items"] = part_items(args)
    C.write_result(args.results_dir, NAME, result, quick=q, machine=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
