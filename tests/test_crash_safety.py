"""Crash-safe training: atomic checkpoints, SIGKILL mid-epoch then resume=true gives the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from segbench.callbacks import AtomicCheckpointIO
from tests.helpers import interruptible_run_args

ROOT = Path(__file__).resolve().parents[1]
SEGBENCH = str(Path(sys.executable).parent / "segbench")


def _train(args: list[str], out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [SEGBENCH, "train", *args, f"paths.output_dir={out}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.mark.slow  # ~35-95 s on 2 cores: with the slow tests in .ci/run, so make test fits ~10 min
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(synth_root, tmp_path):
    args = interruptible_run_args(synth_root)
    ref = _train(args, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    (ref_run,) = (tmp_path / "ref" / "train" / "default").iterdir()
    ref_m = json.loads((ref_run / "metrics.json").read_text())
    ref_last = torch.load(ref_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ref_last["global_step"] == 9  # last.ckpt follows the run even when the metric stops improving

    killed = _train(
        [*args, "+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=5"],
        tmp_path / "run",
    )
    assert killed.returncode == -signal.SIGKILL  # killed in the middle of epoch 1 (steps 3..5)
    (run,) = (tmp_path / "run" / "train" / "default").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    assert not (run / "metrics.json").exists()

    resumed = _train([*args, "resume=true"], tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] == ref_m["global_step"] == 9
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2]
    for a, b in zip(m["history"], ref_m["history"], strict=True):
        assert a.pop("wall_s") > 0 and b.pop("wall_s") > 0  # wall time differs between the runs
        assert a == pytest.approx(b, abs=1e-6)
    w_ref = ref_last["state_dict"]
    w = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    diffs = {k: float((w[k].double() - w_ref[k].double()).abs().max()) for k in w_ref if w_ref[k].numel()}
    worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    assert all(torch.allclose(w[k].float(), w_ref[k].float(), atol=1e-5) for k in w_ref), worst


def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    torch.save({"global_step": 3}, target)
    plugin = AtomicCheckpointIO()

    def dies_while_writing(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt  # the process dies in the middle of the write

    with monkeypatch.context() as m:
        m.setattr(TorchCheckpointIO, "save_checkpoint", dies_while_writing)
        with pytest.raises(KeyboardInterrupt):
            plugin.save_checkpoint({"global_step": 5}, target)
    assert torch.load(target, weights_only=True) == {"global_step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial file left
    plugin.save_checkpoint({"global_step": 5}, target)
    assert torch.load(target, weights_only=True) == {"global_step": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_trainer_of_every_run_saves_through_the_atomic_plugin(tmp_path):
    from hydra.utils import instantiate

    from segbench.cli import compose

    cfg = compose("train", [f"paths.output_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
