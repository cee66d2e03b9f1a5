"""CPU inference formats side by side: ms per image, images/s and segm AP of each, against bare torchvision
float32.

One checkpoint (``--ckpt``, a segbench checkpoint) runs on the same val images (``--data``: a COCO folder;
its first ``--images`` val images, loaded into memory first, so decoding is not timed) in every format:

* ``bare torchvision fp32`` — the reference: ``model([image])`` (torchvision pastes every detection's mask
  as a full-size float image) + ``masks > mask_threshold`` to numpy, as ``bench_predict.py`` defines it;
* ``segbench fp32`` — what ``segbench predict ckpt_path=...`` runs (``load_predictor(...).segment``): masks
  only for the boxes predict keeps (score threshold, or the per-class calibrated ones), fused paste + RLE;
* ``segbench fp32 proposals=auto`` — the same with ``proposals=auto`` (RPN proposals fitted to the model's
  detection cap; :func:`segbench.models.segmenter.proposals_for`);
* ``segbench bf16+channels_last`` (and with ``proposals=auto``) — ``precision=bf16``; skipped, with the
  reason, on a CPU without bfloat16 instructions (autocast emulates it there: slower than fp32), unless
  ``--force-bf16``;
* ``ONNX Runtime``, ``OpenVINO fp32``, ``OpenVINO INT8``, ``OpenVINO fp32 score_floor=auto`` — files written by
  ``segbench.export.export_checkpoint(ckpt, out, formats=[onnx|openvino|openvino_int8])`` (the last row
  with ``score_floor="auto"``: the graph drops the boxes predict throws away before the mask head; each format
  through its own parity / accuracy check) and run as ``segbench predict exported=FILE`` runs them; a
  row whose package is missing says "not installed", one whose export fails says "failed: reason".

Every row is one image per call (ONNX exports take one image per call). Each row is run once untimed
(warm-up; its predictions are scored), then ``--reps`` timed passes over all images, the rows' order
rotating from pass to pass; the figure is the median pass. Every row's predictions are filtered with
predict's rule (``--score-threshold``, or the checkpoint's per-class calibrated thresholds, else 0.5)
and scored on the same images with segbench's evaluator (COCO segm AP, every detection kept); the bare
row does the same work as predict minus the thrown-away masks, so its AP is the reference. A row passes
when its AP is at most ``--ap-tolerance`` (0.01) below the bare row's. Printed: the table, and the ratio of
the fastest passing row to bare fp32 (target >= 2x).

    python benchmarks/bench_deploy.py --ckpt RUN/checkpoints/last.ckpt --data DATA   # minutes
    python benchmarks/bench_deploy.py --quick    # an untrained tiny model on 3 synthetic images (minutes: the exports)
"""

from __future__ import annotations

import importlib.util
import inspect
import tempfile
import time
from pathlib import Path

import _common as C

NAME = "bench_deploy"
TARGET_SPEEDUP = 2.0
#: export format -> (row name, the packages it needs)
EXPORTS = {
    "onnx": ("ONNX Runtime", ("onnxruntime",)),
    "openvino": ("OpenVINO fp32", ("openvino",)),
    "openvino_int8": ("OpenVINO INT8", ("openvino", "nncf")),
    # the OpenVINO export with score_floor=auto: its graph drops the boxes predict would throw away
    # before the mask head (masks for the kept boxes only, as the "segbench fp32" row)
    "openvino_floor": ("OpenVINO fp32 score_floor=auto", ("openvino",)),
}
#: bench row -> (export format, extra export_checkpoint options)
EXPORT_AS = {"openvino_floor": ("openvino", {"score_floor": "auto"})}


def quick_checkpoint(tmp: Path, *, size: int, images: int) -> tuple[Path, Path]:
    """A tiny untrained ``synth_cpu``-style model saved as a segbench checkpoint, and synthetic data."""
    import torch
    from omegaconf import OmegaConf

    from segbench.data.synthetic import generate
    from segbench.models.maskrcnn import build_maskrcnn

    data = tmp / "synth"
    generate(data, num_train=2, num_val=images, image_size=size, seed=0)
    cfg = C.experiment_config("synth_cpu", tmp)
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    net.update(min_size=size, max_size=size, weights=None, box_detections_per_img=20)
    torch.manual_seed(0)
    model = build_maskrcnn(num_classes=3, **net)
    names = ["circle", "square", "triangle"]
    card = {
        "format": 1,
        "net": net,
        "num_classes": 3,
        "class_names": names,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "label_to_cat_id": {i + 1: i + 1 for i in range(3)},
        "mask_threshold": 0.5,
        "history": [],
    }
    ckpt = tmp / "quick.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "segbench": card}, ckpt
    )
    return ckpt, data


def bare_row(ckpt: Path, mask_threshold: float):
    """``model([image])`` + threshold, as bench_predict's bare path; returns ``run`` and ``to_instances``."""
    import numpy as np
    import torch

    from segbench.models.checkpoint import load_model
    from segbench.types import Instances, masks_to_rles

    model, _, _ = load_model(ckpt)
    model.eval()

    @torch.inference_mode()
    def run(images):
        out = []
        for im in images:
            (o,) = model([torch.from_numpy(im).permute(2, 0, 1).float().div_(255)])
            out.append((o, (o["masks"][:, 0] > mask_threshold).numpy(), im.shape[:2]))
        return out

    def to_instances(raw):
        return [
            Instances(
                image_size=size,
                boxes=o["boxes"].numpy().astype(np.float32),
                labels=o["labels"].numpy(),
                scores=o["scores"].numpy().astype(np.float32),
                rles=masks_to_rles(m) if len(m) else [],
            )
            for o, m, size in raw
        ]

    return run, to_instances


def predictor_row(predictor):
    def run(images):
        return [predictor.segment([im])[0] for im in images]

    return run, lambda raw: raw


def export_row(
    ckpt: Path,
    fmt: str,
    out: Path,
    *,
    data: Path,
    accuracy_images: int,
    calibration_images: int | None,
    score_threshold,
):
    """Export ``fmt`` and open it as ``segbench predict exported=`` does; ``(run, to_instances)`` or the
    reason it cannot run."""
    name, packages = EXPORTS[fmt]
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        return f"not installed ({', '.join(missing)})"
    try:
        from segbench.export import export_checkpoint
        from segbench.predict import load_predictor

        fmt_file, extra = EXPORT_AS.get(fmt, (fmt, {}))
        if "score_floor" in extra and score_threshold is not None:  # the floor is the threshold given
            extra = {**extra, "score_floor": score_threshold}
        wanted = {
            **extra,
            "formats": [fmt_file],
            "calibration_images": calibration_images,
            "calibration_data": data,  # its train split
            "accuracy_data": data,  # the export's own accuracy check, on the same val images
            "accuracy_images": accuracy_images,
        }
        params = inspect.signature(export_checkpoint).parameters
        kwargs = {k: v for k, v in wanted.items() if v is not None and k in params}
        t0 = time.perf_counter()
        report = export_checkpoint(ckpt, out / fmt, **kwargs)
        entry = report["formats"][fmt_file]
        print(f"  exported {fmt} in {time.perf_counter() - t0:.1f} s: {entry['status']}", flush=True)
        if entry.get("status") != "ok":
            return f"failed: {str(entry.get('error') or entry.get('status'))[:200]}"
        predictor = load_predictor(exported=out / fmt / entry["file"], score_threshold=score_threshold)
        return predictor, report
    except Exception as e:  # noqa: BLE001 - one format failing must not stop the benchmark
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"failed: {type(e).__name__}: {msg[:200]}"


def segm_ap(dataset, indices, preds) -> float:
    from segbench.eval.metrics import Evaluator

    ev = Evaluator(dataset.categories, label_to_cat_id=dataset.label_to_cat_id, iou_types=("segm",))
    for i, p in zip(indices, preds, strict=True):
        ev.update(dataset.load_instances(i), p, image_id=dataset.images[i]["id"])
    return float(ev.compute()["segm_AP"])


def main(argv=None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, default=None, help="a segbench checkpoint (required without --quick)")
    p.add_argument("--data", type=Path, default=None, help="the COCO folder whose val split is scored")
    p.add_argument("--images", type=int, default=None, help="val images (default 50; quick 3)")
    p.add_argument("--reps", type=int, default=None, help="timed passes per row (default 3; quick 1)")
    p.add_argument(
        "--score-threshold", type=float, default=None, help="default: predict's (calibrated / 0.5)"
    )
    p.add_argument(
        "--ap-tolerance", type=float, default=0.01, help="largest AP drop vs bare fp32 that passes"
    )
    p.add_argument(
        "--calibration-images", type=int, default=None, help="INT8 calibration images (export's default)"
    )
    p.add_argument("--formats", nargs="*", default=list(EXPORTS), choices=list(EXPORTS), help="export rows")
    p.add_argument(
        "--force-bf16", action="store_true", help="run the bf16 rows on a CPU without bf16 instructions"
    )
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images or (3 if q else 50)
    args.reps = args.reps or (1 if q else 3)
    if q and args.calibration_images is None:
        args.calibration_images = 2
    if q and args.score_threshold is None:  # an untrained model scores below 0.5: keep its detections
        args.score_threshold = 0.0
    C.quiet_logs()
    info = C.header(NAME, args)

    import torch

    from segbench.data.coco import open_split
    from segbench.models.segmenter import cpu_has_bf16
    from segbench.predict import load_predictor

    bf16_native = cpu_has_bf16()
    if not q and (args.ckpt is None or args.data is None):  # run_all.py runs every script without options
        reason = "no --ckpt CKPT --data DATA given (a trained checkpoint and its COCO folder); --quick runs a tiny model"
        skip = C.skipped("deploy formats", reason)
        C.write_result(args.results_dir, NAME, {"skipped": [skip], "targets": []}, quick=q, machine=info)
        return 0
    print(
        f"bfloat16 instructions on this CPU (AVX512-BF16 or AMX): {bf16_native}; torch threads {torch.get_num_threads()}"
    )
    result: dict = {
        "skipped": [],
        "args": {k: str(v) for k, v in vars(args).items()},
        "bf16_native": bf16_native,
    }
    with tempfile.TemporaryDirectory(prefix="segbench-bench-deploy-") as tmp_name:
        tmp = Path(tmp_name)
        if q:
            ckpt, data = quick_checkpoint(tmp, size=96, images=args.images)
        else:
            ckpt, data = args.ckpt, args.data
        from segbench.models.checkpoint import read_checkpoint

        card = read_checkpoint(ckpt)["segbench"]  # score with the model's classes, as `segbench eval` does
        val = open_split(str(data), "val", classes=card["categories"], classes_source=str(ckpt))
        indices = list(range(min(args.images, len(val))))
        images = [val.load_image(i) for i in indices]
        sizes = sorted({im.shape[:2] for im in images})
        print(
            f"checkpoint {ckpt}; {len(images)} val images of {data} (sizes {sizes[0]}..{sizes[-1]})",
            flush=True,
        )

        ref = load_predictor(ckpt_path=ckpt, score_threshold=args.score_threshold)
        rule = (
            f"score >= {args.score_threshold}"
            if args.score_threshold is not None
            else (f"calibrated per class {ref.score_thresholds}" if ref.score_thresholds else "score >= 0.5")
        )
        mask_thr = float(ref.segment.__self__.mask_threshold)
        rows: dict[str, tuple | str] = {"bare torchvision fp32": bare_row(ckpt, mask_thr)}
        rows["segbench fp32"] = predictor_row(ref)
        auto = load_predictor(ckpt_path=ckpt, score_threshold=args.score_threshold, proposals="auto")
        n_auto = auto.segment.__self__.proposals
        rows[f"segbench fp32 proposals=auto ({n_auto})"] = predictor_row(auto)
        for label, proposals in (
            ("segbench bf16+channels_last", None),
            (f"segbench bf16 proposals=auto ({n_auto})", "auto"),
        ):
            if bf16_native or args.force_bf16:
                pr = load_predictor(
                    ckpt_path=ckpt,
                    score_threshold=args.score_threshold,
                    precision="bf16",
                    proposals=proposals,
                )
                rows[label] = predictor_row(pr)
            else:
                rows[label] = (
                    "skipped: no bfloat16 instructions on this CPU (emulated: slower than fp32; --force-bf16)"
                )
        export_reports = {}
        for fmt in args.formats:
            got = export_row(
                ckpt,
                fmt,
                tmp / "export",
                data=data,
                accuracy_images=len(images),
                calibration_images=args.calibration_images,
                score_threshold=args.score_threshold,
            )
            if isinstance(got, str):
                rows[EXPORTS[fmt][0]] = got
            else:
                rows[EXPORTS[fmt][0]] = predictor_row(got[0])
                export_reports[fmt] = got[1]["formats"][EXPORT_AS.get(fmt, (fmt,))[0]]

        runnable = [k for k, v in rows.items() if not isinstance(v, str)]
        preds, times = {}, {k: [] for k in runnable}
        for k in runnable:  # warm-up pass, whose predictions are scored
            run, to_inst = rows[k]
            preds[k] = [ref.keep(inst, args.score_threshold) for inst in to_inst(run(images))]
            print(f"  warm-up {k}", flush=True)
        for r in range(args.reps):  # alternating: the order rotates each pass
            order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)]
            for k in order:
                t0 = time.perf_counter()
                rows[k][0](images)
                times[k].append(time.perf_counter() - t0)
        n = len(images)
        ap = {k: segm_ap(val, indices, preds[k]) for k in runnable}

    bare = "bare torchvision fp32"
    med = {k: C.median(v) for k, v in times.items()}
    table, out_rows = [], []
    for k, v in rows.items():
        if isinstance(v, str):
            table.append([k, None, None, None, None, None, v])
            out_rows.append({"format": k, "status": v})
            continue
        ms = 1000 * med[k] / n
        speed = med[bare] / med[k]
        drop = ap[bare] - ap[k]
        ok = drop <= args.ap_tolerance
        dets = sum(len(x) for x in preds[k]) / n
        table.append([k, ms, n / med[k], speed, ap[k], dets, "pass" if ok else f"FAIL (AP -{drop:.3f})"])
        out_rows.append(
            {
                "format": k,
                "status": "ok",
                "ms_per_image": ms,
                "images_per_s": n / med[k],
                "speedup_vs_bare": speed,
                "segm_AP": ap[k],
                "ap_drop": drop,
                "passed": ok,
                "detections_per_image": dets,
                "seconds": times[k],
            }
        )
    C.print_table(
        ["format", "ms/image", "images/s", "vs bare fp32", "segm AP", "dets/img", "accuracy"],
        table,
        title=f"CPU inference, {n} images, one per call, kept: {rule}, median of {args.reps} pass(es)",
    )
    passing = [r for r in out_rows if r.get("passed")]
    best = max(passing, key=lambda r: r["speedup_vs_bare"]) if passing else None
    if best:
        print(
            f"\nfastest format that passes the accuracy check: {best['format']}, {best['speedup_vs_bare']:.2f}x bare torchvision fp32"
        )
    targets = [
        C.target(
            "deploy: fastest passing format / bare fp32",
            best["speedup_vs_bare"] if best else None,
            TARGET_SPEEDUP,
            note=best["format"] if best else "no format passed",
        )
    ]
    C.print_targets(targets, quick=q)
    result.update(rows=out_rows, images=n, kept=rule, exports=export_reports, targets=targets, fastest=best)
    C.write_result(args.results_dir, NAME, result, quick=q, machine=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
