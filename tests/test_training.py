"""Training, evaluation and resuming through the command line, on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from segbench.cli import main
from segbench.models.segmenter import cpu_has_bf16

#: Where the CPU lacks bfloat16 instructions torch emulates them, about 20x slower (120 s for a 64 px
#: fast_dev_run on a 2-core AVX2 machine): the bfloat16 run is then a slow test, and tests whose subject is not
#: bfloat16 train in float32.
BF16_OR_SLOW = [] if cpu_has_bf16() else [pytest.mark.slow]
FAST_PRECISION = "bf16-mixed" if cpu_has_bf16() else "32-true"

TINY = ["debug=tiny", "model.net.min_size=64", "model.net.max_size=64", "data.limit_val=4"]


def tiny(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *TINY, f"data.root={root}", f"paths.output_dir={out}", *extra]


def run_dirs(out: Path, name: str = "default") -> list[Path]:
    return sorted((out / "train" / name).glob("*/"))


def test_fast_dev_run(synth_root, tmp_path, capsys):
    code = main(
        [
            "train",
            "debug=fdr",
            f"data.root={synth_root}",
            f"paths.output_dir={tmp_path}",
            "model.net.min_size=64",
            "model.net.max_size=64",
        ]
    )
    assert code == 0, capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()


class ProbeCallback(pl.Callback):
    """Records the state a (resumed) run starts from."""

    seen: dict = {}

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        ProbeCallback.seen = {
            "global_step": trainer.global_step,
            "optimizer": {
                k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
                for k, v in opt.state_dict()["state"].items()
            },
            "lr": opt.param_groups[0]["lr"],
        }


def test_train_eval_score_resume(synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(tiny(synth_root, out)) == 0, capsys.readouterr().err
    (run,) = run_dirs(out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and len(metrics["history"]) == 1
    assert "val/segm_mAP" in metrics["history"][0]
    assert metrics["history"][0]["wall_s"] > 0  # training wall time at each validation (mAP-vs-time curves)
    last = run / "checkpoints" / "last.ckpt"
    best = Path(metrics["best_checkpoint"])
    assert last.is_file() and best.is_file() and best.parent == last.parent
    (csv,) = run.glob("logs/*/metrics.csv")
    assert not list(run.rglob("*.tmp"))  # atomic saves leave no temporary file behind
    csv_head = csv.read_text().splitlines()[0]
    for key in ("train/loss_mask", "train/loss_classifier", "train/lr", "val/segm_mAP", "val/bbox_mAP"):
        assert key in csv_head

    # eval writes metrics.json and results.json that `segbench score` reproduces exactly
    ev = tmp_path / "eval"
    assert main(["eval", f"ckpt_path={last}", f"data.root={synth_root}", f"out={ev}"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    results = json.loads((ev / "results.json").read_text())
    assert m["num_pred"] == len(results)
    cats = {
        c["id"]
        for c in json.loads((synth_root / "annotations" / "instances_val.json").read_text())["categories"]
    }
    assert {r["category_id"] for r in results} <= cats
    sc = tmp_path / "score"
    gt = synth_root / "annotations" / "instances_val.json"
    assert main(["score", f"gt={gt}", f"pred={ev / 'results.json'}", f"out={sc}"]) == 0
    s = json.loads((sc / "metrics.json").read_text())
    for k in ("segm_AP", "segm_AP50", "bbox_AP", "segm_agnostic_AP", "f1", "pq", "fg_iou"):
        assert s[k] == m[k], k

    # resume: the latest run continues from last.ckpt with its step, optimizer and schedule
    saved = torch.load(last, map_location="cpu", weights_only=True)
    probe = "+callbacks.probe._target_=tests.test_training.ProbeCallback"
    assert main(tiny(synth_root, out, "resume=true", "trainer.max_epochs=2", probe)) == 0, (
        capsys.readouterr().err
    )
    assert run_dirs(out) == [run]  # same run folder
    assert len(list(run.glob("logs/*/metrics.csv"))) == 2  # the first start's logs are kept
    seen = ProbeCallback.seen
    assert seen["global_step"] == 2
    saved_state = saved["optimizer_states"][0]["state"]
    assert seen["optimizer"].keys() == saved_state.keys() and len(saved_state) > 10
    for k, v in seen["optimizer"].items():
        for n, t in v.items():
            assert torch.equal(t, saved_state[k][n])
    assert seen["lr"] == pytest.approx(saved["optimizer_states"][0]["param_groups"][0]["lr"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and [h["epoch"] for h in metrics["history"]] == [0, 1]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4 and resumed["lr_schedulers"][0]["last_epoch"] == 4


def test_resume_without_previous_run_is_a_clear_error(synth_root, tmp_path, capsys):
    code = main(tiny(synth_root, tmp_path, "resume=true"))
    assert code == 2 and "no earlier run" in capsys.readouterr().err


@pytest.mark.slow  # ~35-95 s on 2 cores: with the slow tests in .ci/run, so make test fits ~10 min
def test_ckpt_path_resume_of_a_given_checkpoint(synth_root, tmp_path, capsys):
    assert main(tiny(synth_root, tmp_path / "a")) == 0
    (run,) = run_dirs(tmp_path / "a")
    ck = run / "checkpoints" / "last.ckpt"
    assert main(tiny(synth_root, tmp_path / "b", f"ckpt_path={ck}", "trainer.max_epochs=2")) == 0
    (run_b,) = run_dirs(tmp_path / "b")
    assert json.loads((run_b / "metrics.json").read_text())["global_step"] == 4


def test_weights_file_with_another_class_count(synth_root, tmp_path, capsys, caplog):
    from segbench.models.maskrcnn import build_maskrcnn

    other = build_maskrcnn(num_classes=5, backbone="resnet18_fpn", min_size=64, max_size=64)
    path = tmp_path / "five.pth"
    torch.save(other.state_dict(), path)
    code = main(
        [
            "train",
            "debug=fdr",
            f"data.root={synth_root}",
            f"paths.output_dir={tmp_path}",
            f"model.net.weights={path}",
            "model.net.min_size=64",
            "model.net.max_size=64",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "replaced" in caplog.text.lower() or "re-initialised" in caplog.text.lower()


def test_nonfinite_loss_names_step_and_term(synth_root, tmp_path, capsys, monkeypatch):
    import torchvision.models.detection.roi_heads as rh

    monkeypatch.setattr(rh, "maskrcnn_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    code = main(tiny(synth_root, tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "non-finite loss at step 0" in err and "loss_mask=nan" in err
    # skipping instead: training finishes, the batches are counted, no NaN-scored checkpoint is "best"
    code = main(tiny(synth_root, tmp_path / "skip", "model.on_nonfinite_loss=skip"))
    assert code == 0
    (run,) = run_dirs(tmp_path / "skip")
    assert json.loads((run / "metrics.json").read_text())["skipped_batches"] == 2


@pytest.mark.parametrize("precision", [pytest.param("bf16-mixed", marks=BF16_OR_SLOW)])
def test_bf16_mixed_precision_runs_on_cpu(precision, synth_root, tmp_path, capsys):
    code = main(
        [
            "train",
            "debug=fdr",
            f"data.root={synth_root}",
            f"paths.output_dir={tmp_path}",
            "model.net.min_size=64",
            "model.net.max_size=64",
            f"trainer.precision={precision}",
        ]
    )
    assert code == 0, capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes(synth_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [
        str(Path(sys.executable).parent / "segbench"),
        *tiny(synth_root, tmp_path),
        "trainer=ddp_cpu",
        "trainer.max_steps=2",
        "data.batch_size=1",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] == 2


def test_schedule_by_time_follows_the_time_fraction():
    from segbench.models.module import WarmupSchedule

    steps = WarmupSchedule(total_steps=1000, name="cosine", warmup_steps=0, min_lr_ratio=0.0)
    timed = WarmupSchedule(total_steps=1000, name="cosine", warmup_steps=0, min_lr_ratio=0.0, by_time=True)
    for s in (steps, timed):
        s.time_fraction = 0.5
    assert steps(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.01)))  # time ignored without by_time
    assert timed(10) == pytest.approx(0.5)  # half the time gone: half-way down the cosine
    assert timed(900) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))  # steps ahead of time: steps win
    timed.time_fraction = 1.0
    assert timed(10) == pytest.approx(0.0, abs=1e-12)
    multi = WarmupSchedule(total_steps=100, name="multistep", milestones=(0.5, 0.9), gamma=0.1, by_time=True)
    multi.time_fraction = 0.6
    assert multi(1) == pytest.approx(0.1)


def test_schedule_by_time_needs_max_time(synth_root, tmp_path, capsys):
    code = main(tiny(synth_root, tmp_path, "model.scheduler.by_time=true"))
    err = capsys.readouterr().err
    assert code == 2 and "model.scheduler.by_time" in err and "trainer.max_time" in err


def test_schedule_by_time_decays_within_the_time_budget(synth_root, tmp_path, capsys):
    code = main(
        tiny(
            synth_root,
            tmp_path,
            "model.scheduler.by_time=true",
            "model.scheduler.warmup_steps=0",
            "model.scheduler.min_lr_ratio=0",
            "trainer.max_time=00:00:00:12",
            "trainer.max_epochs=1000",
            "trainer.limit_train_batches=1",
            "trainer.check_val_every_n_epoch=1000",
            "test_after_fit=false",
        )
    )
    assert code == 0, capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    rows = [r for r in csv.DictReader(next(run.glob("logs/*/metrics.csv")).open()) if r.get("train/lr")]
    lrs = [float(r["train/lr"]) for r in rows]
    assert len(lrs) >= 3 and lrs[0] > 0.9 * 0.02  # starts at the peak (experiment-free default lr 0.02)
    assert lrs == sorted(lrs, reverse=True)  # decays monotonically with time ...
    assert lrs[-1] < 0.5 * lrs[0]  # ... and is past half-way when the time budget stops the run


def test_channels_last_trains_and_its_checkpoint_is_an_ordinary_one(synth_root, tmp_path, capsys):
    from segbench.models.checkpoint import read_checkpoint
    from segbench.models.maskrcnn import build_maskrcnn
    from segbench.models.module import MaskRCNNModule

    net = {"backbone": "resnet18_fpn", "weights": None, "min_size": 64, "max_size": 64}
    torch.manual_seed(0)
    module = MaskRCNNModule(
        net=net,
        num_classes=3,
        class_names=["a", "b", "c"],
        categories=[{"id": i, "name": n} for i, n in enumerate("abc", 1)],
        label_to_cat_id={1: 1, 2: 2, 3: 3},
        channels_last=True,
    )
    conv = module.model.backbone.body.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = build_maskrcnn(num_classes=3, **net)
    plain.load_state_dict(module.model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    module.model.eval(), plain.eval()
    with torch.no_grad():
        a, b = module.model.backbone(x), plain.backbone(x)
    for k in a:  # same weights, other memory layout: the same features
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)

    code = main(tiny(synth_root, tmp_path, "model.channels_last=true", f"trainer.precision={FAST_PRECISION}"))
    assert code == 0, capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] == 2 and 0 <= m["val"]["segm_AP"] <= 1  # evaluated from the checkpoint
    evaluated = read_checkpoint(m["best_checkpoint"] or m["last_checkpoint"])["segbench"]
    assert evaluated["score_thresholds"] == m["val"]["score_thresholds"]  # calibrated, stored in the card
    assert set(evaluated["score_thresholds"]) == {"circle", "square", "triangle"}
    assert (run / "eval" / "per_image.csv").read_text().startswith("image_id,file_name,tp,fp,fn,f1,mean_iou")
    state = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    fresh = build_maskrcnn(num_classes=3, **{**net, "min_size": 96, "max_size": 96})
    fresh.load_state_dict({k[len("model.") :]: v for k, v in state.items()})


def test_cpu_precision_follows_the_cpu(monkeypatch):
    import segbench.training as training
    from segbench.cli import compose

    for has_bf16, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(training, "cpu_has_bf16", lambda v=has_bf16: v)
        cfg = compose("train", ["trainer.precision=${cpu_precision:}"])
        assert cfg.trainer.precision == expected
    monkeypatch.undo()
    assert isinstance(training.cpu_has_bf16(), bool)


@pytest.mark.slow  # a real training with the callback (the toy test in test_aids.py checks the averaging itself)
def test_ema_training_evaluates_the_averaged_weights(synth_root, tmp_path, capsys):
    from segbench.models.checkpoint import read_checkpoint

    code = main(tiny(synth_root, tmp_path, "callbacks.ema.enabled=true", "trainer.max_steps=2"))
    assert code == 0, capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] == 2 and 0 <= m["val"]["segm_AP"] <= 1
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    # Lightning's WeightAveraging: state_dict holds the average, current_model_state the raw weights
    raw, avg = ckpt["current_model_state"], ckpt["state_dict"]
    assert set(raw) == set(avg)
    assert any(not torch.equal(raw[k], avg[k]) for k in avg if avg[k].is_floating_point())
