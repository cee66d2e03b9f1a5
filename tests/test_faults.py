"""Faults a training run survives without losing work: a damaged last.ckpt, a full disk, two runs started in
the same second, SIGTERM before preemption."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.plugins import TorchCheckpointIO

from segbench.callbacks import AtomicCheckpointIO
from segbench.cli import main
from segbench.models.checkpoint import newest_readable_checkpoint
from segbench.training import PREEMPTED_EXIT_CODE, RUN_DIR_ENV, claim_run_dir, latest_run
from segbench.types import SegbenchError
from tests.helpers import interruptible_run_args
from tests.test_training import run_dirs, tiny

ROOT = Path(__file__).resolve().parents[1]
SEGBENCH = str(Path(sys.executable).parent / "segbench")


def _segbench(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LOCAL_RANK", None)
    return subprocess.Popen(
        [SEGBENCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw
    )


def _run(args: list[str]) -> subprocess.CompletedProcess:
    p = _segbench(args)
    out, err = p.communicate(timeout=900)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


# -- a. a truncated or corrupt last.ckpt on resume=true ------------------------------------------------


def test_newest_readable_checkpoint_skips_damaged_files(tmp_path):
    def ckpt(name: str, step: int) -> Path:
        p = tmp_path / name
        torch.save({"global_step": step, "state_dict": {}, "segbench": {"num_classes": 1}}, p)
        return p

    last, best, old = ckpt("last.ckpt", 7), ckpt("best.ckpt", 7), ckpt("old.ckpt", 3)
    assert newest_readable_checkpoint([last, best, old]) == (last, 7, [])  # a tie goes to the first
    last.write_bytes(last.read_bytes()[:100])  # truncated
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    path, step, skipped = newest_readable_checkpoint([last, garbage, old, best])
    assert (path, step) == (best, 7) and [p for p, _ in skipped] == [last, garbage]
    assert all("is it truncated" in why for _, why in skipped)
    with pytest.raises(
        SegbenchError, match=r"none of the 2 checkpoint\(s\) is readable: last.ckpt: .*garbage"
    ):
        newest_readable_checkpoint([last, garbage])


def test_a_damaged_last_ckpt_resumes_from_the_newest_readable_checkpoint(
    synth_root, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    assert main(tiny(synth_root, out, "test_after_fit=false")) == 0, capsys.readouterr().err
    (run,) = run_dirs(out)
    last = run / "checkpoints" / "last.ckpt"
    (best,) = [p for p in (run / "checkpoints").glob("*.ckpt") if p != last]
    assert _step(last) == _step(best) == 2
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy cut short, a full disk...
    capsys.readouterr()

    code = main(tiny(synth_root, out, "resume=true", "trainer.max_epochs=2", "test_after_fit=false"))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"resuming from {best}: skipped unreadable last.ckpt" in printed.out
    assert f"cannot resume from {last}" in caplog.text and "is it truncated" in caplog.text
    assert run_dirs(out) == [run]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert _step(last) == 4  # the next save replaced the damaged file

    for p in (last, best):  # nothing readable: a clear error naming every file, no traceback
        p.write_bytes(b"\0" * 64)
    code = main(tiny(synth_root, out, "resume=true", "trainer.max_epochs=3"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("segbench: error: cannot resume: none of the 2 checkpoint(s) is readable")
    assert "last.ckpt: cannot read checkpoint" in err and f"{best.name}: cannot read checkpoint" in err


def test_latest_run_orders_numbered_folders_by_start(tmp_path):
    base = tmp_path / "train" / "x"
    for name in (
        "2026-01-01_10-00-00",
        "2026-01-01_10-00-00-10",
        "2026-01-01_10-00-00-2",
        "2025-12-31_23-59-59",
    ):
        (base / name / "checkpoints").mkdir(parents=True)
        (base / name / "checkpoints" / "epoch000.ckpt").write_bytes(b"x")
    (base / "2026-01-02_00-00-00").mkdir()  # newer but without a checkpoint
    assert latest_run(tmp_path, "x") == base / "2026-01-01_10-00-00-10"


# -- b. a full disk while saving ------------------------------------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_path_and_free_space(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, target)

    def disk_full(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", disk_full)
    with pytest.raises(SegbenchError) as info:
        AtomicCheckpointIO().save_checkpoint({"global_step": 5}, target)
    msg = str(info.value)
    assert f"cannot write {target} (No space left on device;" in msg and " free of " in msg
    assert "the previous checkpoint there is intact" in msg and "resume=true" in msg
    assert torch.load(target, weights_only=True) == {"global_step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial file left


def test_a_full_disk_during_training_stops_with_exit_2_and_loses_no_checkpoint(
    synth_root, tmp_path, capsys, monkeypatch
):
    real_save = TorchCheckpointIO.save_checkpoint
    failed: list[Path] = []

    def fills_up_after_step_2(self, checkpoint, path, storage_options=None):
        if checkpoint["global_step"] <= 2:
            return real_save(self, checkpoint, path, storage_options)
        Path(path).write_bytes(b"half a checkpoint")
        failed.append(Path(path))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", fills_up_after_step_2)
    code = main(tiny(synth_root, tmp_path, "trainer.max_epochs=2", "test_after_fit=false"))
    err = capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    (tmp,) = failed
    target = tmp.with_name(tmp.name.removesuffix(".tmp"))
    assert code == 2 and "Traceback" not in err
    assert f"segbench: error: training stopped: cannot write {target} (No space left on device;" in err
    assert " free of " in err and "resume=true" in err
    assert target.parent == run / "checkpoints"
    assert _step(run / "checkpoints" / "last.ckpt") == 2  # the previous checkpoints are intact
    assert all(_step(p) == 2 for p in (run / "checkpoints").glob("*.ckpt"))
    assert not list(run.rglob("*.tmp")) and not (run / "metrics.json").exists()


# -- c. two runs of one name started in the same second ------------------------------------------------


def _claim(path: str, barrier, queue) -> None:
    barrier.wait()
    queue.put(str(claim_run_dir(path, environ={})[0]))


def test_processes_that_claim_one_folder_at_once_get_one_each(tmp_path):
    ctx = multiprocessing.get_context("fork")  # cheap; the claim itself is plain file-system calls
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path / "run"), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got == sorted(str(tmp_path / n) for n in ["run", *(f"run-{k}" for k in range(2, n + 1))])


def test_ddp_ranks_share_the_folder_their_launcher_claimed(tmp_path):
    env: dict[str, str] = {}
    folder, owner = claim_run_dir(tmp_path / "run", environ=env)
    assert owner and env[RUN_DIR_ENV] == str(folder)
    taken, owner2 = claim_run_dir(tmp_path / "run", environ={})  # an unrelated command: its own folder
    assert taken == tmp_path / "run-2" and owner2
    child = {**env, "LOCAL_RANK": "1"}  # what Lightning's launcher passes to rank 1
    assert claim_run_dir(tmp_path / "run", environ=child) == (folder, False)
    # ranks started by torchrun / srun (all with LOCAL_RANK, no launcher of ours): one shared path, rank 0 writes
    assert claim_run_dir(tmp_path / "ext", environ={"LOCAL_RANK": "0"}) == (tmp_path / "ext", True)
    assert claim_run_dir(tmp_path / "ext", environ={"LOCAL_RANK": "1"}) == (tmp_path / "ext", False)


def test_a_second_train_into_a_taken_folder_writes_to_its_own(synth_root, tmp_path, capsys, caplog):
    same = tmp_path / "train" / "default" / "2026-01-01_00-00-00"  # what both resolve in the same second
    args = ["train", "debug=fdr", "model.net.min_size=64", "model.net.max_size=64", f"data.root={synth_root}"]
    args += [f"paths.output_dir={tmp_path}", f"run_dir={same}"]
    assert main(args) == 0 and main(args) == 0, capsys.readouterr().err
    folders = run_dirs(tmp_path)
    assert [f.name for f in folders] == [same.name, same.name + "-2"]
    for f in folders:  # every path of the second run follows its folder
        cfg = yaml.safe_load((f / "config.yaml").read_text())
        assert cfg["run_dir"] == str(f) and cfg["callbacks"]["last_checkpoint"]["dirpath"] == str(
            f / "checkpoints"
        )
        assert cfg["logger"]["csv"]["save_dir"] == str(f)
        assert json.loads((f / "metrics.json").read_text())["run_dir"] == str(f)
    assert f"{same} belongs to another run; this one writes to {same}-2" in caplog.text


@pytest.mark.slow
def test_two_trains_started_at_once_into_one_folder_get_two(synth_root, tmp_path):
    same = tmp_path / "train" / "default" / "2026-01-01_00-00-00"  # what both resolve in the same second
    args = ["train", "debug=fdr", "model.net.min_size=64", "model.net.max_size=64", f"data.root={synth_root}"]
    args += [f"paths.output_dir={tmp_path}", f"run_dir={same}"]
    procs = [_segbench(args), _segbench(args)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in results]
    folders = run_dirs(tmp_path)
    assert [f.name for f in folders] == [same.name, same.name + "-2"]
    for f in folders:
        cfg = yaml.safe_load((f / "config.yaml").read_text())
        assert cfg["run_dir"] == str(f) and cfg["callbacks"]["last_checkpoint"]["dirpath"] == str(
            f / "checkpoints"
        )
        assert json.loads((f / "metrics.json").read_text())["run_dir"] == str(f)
    assert any("belongs to another run" in e for _, e in results)


# -- d. SIGTERM (sent by SLURM and other schedulers before preemption) ---------------------------------


class SigtermAtStep(pl.Callback):
    """Sends SIGTERM to its own process once, right after global step ``step`` (a scheduler preempting)."""

    def __init__(self, step: int) -> None:
        self.step, self.sent = step, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_the_current_step_and_resume_finishes_the_run(synth_root, tmp_path):
    out = tmp_path / "out"
    term = ["+callbacks.term._target_=tests.test_faults.SigtermAtStep", "+callbacks.term.step=3"]
    stopped = _run(tiny(synth_root, out, "trainer.max_epochs=2", "test_after_fit=false", *term))
    assert stopped.returncode == PREEMPTED_EXIT_CODE == 143, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    (run,) = run_dirs(out)
    last = run / "checkpoints" / "last.ckpt"
    msg = f"segbench: error: training stopped by SIGTERM after step 3; its checkpoint at that step is {last}"
    assert msg in stopped.stderr and "resume=true" in stopped.stderr
    assert _step(last) == 3  # mid-epoch 1 (steps 2..3): the current step, not the last save point (2)
    assert not (run / "metrics.json").exists()

    assert main(tiny(synth_root, out, "trainer.max_epochs=2", "test_after_fit=false", "resume=true")) == 0
    assert run_dirs(out) == [run]
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] == 4 and [h["epoch"] for h in m["history"]] == [0, 1] and _step(last) == 4


@pytest.mark.slow
def test_sigterm_then_resume_matches_the_uninterrupted_run(synth_root, tmp_path):
    args = ["train", *interruptible_run_args(synth_root)]
    ref = _run([*args, f"paths.output_dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    (ref_run,) = run_dirs(tmp_path / "ref")
    ref_m = json.loads((ref_run / "metrics.json").read_text())

    out = tmp_path / "run"
    term = [*args, f"paths.output_dir={out}", "+callbacks.term._target_=tests.test_faults.SigtermAtStep"]
    stopped = _run([*term, "+callbacks.term.step=5"])  # in the middle of epoch 1 (steps 3..5)
    assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr[-2000:]
    (run,) = run_dirs(out)
    last = run / "checkpoints" / "last.ckpt"
    assert _step(last) == 5  # SIGKILL at this point would have lost steps 4 and 5 (test_crash_safety)

    resumed = _run([*args, f"paths.output_dir={out}", "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] == ref_m["global_step"] == 9 and _step(last) == 9
    assert [h["epoch"] for h in m["history"]] == [h["epoch"] for h in ref_m["history"]] == [0, 1, 2]
    a, b = dict(m["history"][0]), dict(ref_m["history"][0])
    assert a.pop("wall_s") > 0 and b.pop("wall_s") > 0
    assert a == pytest.approx(b, abs=1e-6)  # the epoch before the stop is the uninterrupted run's
    # The rest of the interrupted epoch is drawn from a new shuffle: the train DataLoader is not resumable
    # mid-epoch (Lightning warns), so later epochs match in steps, not to the last digit.
    assert all(h["val/segm_mAP"] is not None for h in m["history"])
