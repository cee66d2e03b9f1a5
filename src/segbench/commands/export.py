"""``segbench export ckpt_path=FILE [formats=[state_dict,torchscript,onnx]] [out=DIR]``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.export import (
    CARD_FILE,
    MIN_OPSET,
    REPORT_FILE,
    Tolerances,
    export_checkpoint,
    format_report_table,
)
from segbench.types import SegbenchError


def run(cfg: DictConfig) -> int:
    """Export a checkpoint to state_dict / TorchScript / ONNX and check each file against PyTorch.

    Keys: ckpt_path, out, formats (list of state_dict, torchscript, onnx), opset (>= 17),
    tolerances.{box,score,mask}, check_size, check_images (extra image files), timing_runs, keep_failed.
    Exit status 1 when a format failed (its file is not left behind); the others are still written.
    """
    tol = dict(cfg.get("tolerances") or {})
    unknown = sorted(set(tol) - {"box", "score", "mask"})
    if unknown:
        raise SegbenchError(f"unknown tolerance(s) {unknown}; the tolerances are box, score and mask")
    report = export_checkpoint(
        cfg.ckpt_path,
        cfg.out,
        formats=list(cfg.formats) if not isinstance(cfg.formats, str) else cfg.formats,
        tolerances=Tolerances(**{k: float(v) for k, v in tol.items()}),
        opset=int(cfg.get("opset", MIN_OPSET)),
        check_size=cfg.get("check_size"),
        check_images=list(cfg.get("check_images") or []),
        timing_runs=int(cfg.get("timing_runs", 1)),
        keep_failed=bool(cfg.get("keep_failed", False)),
    )
    print(format_report_table(report))
    print(f"wrote {Path(cfg.out) / CARD_FILE} and {Path(cfg.out) / REPORT_FILE}")
    return 0 if report["ok"] else 1
