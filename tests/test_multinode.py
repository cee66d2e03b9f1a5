"""Multi-node training: the ranks that torchrun or srun start on several nodes agree on one run folder, only
global rank 0 writes it, a requeued SLURM job continues its run, and two torchrun "nodes" on 127.0.0.1 train
exactly as one process with twice the batch."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from segbench.cli import _set_start_time, compose
from segbench.training import (
    LAUNCH_FILE,
    RUN_DIR_ENV,
    RUN_MARKER,
    claim_run_dir,
    is_global_zero,
    launcher,
    requeued_run,
    shared_start_time,
)
from segbench.types import SegbenchError
from tests.test_training import run_dirs, tiny

ROOT = Path(__file__).resolve().parents[1]
SEGBENCH = str(Path(sys.executable).parent / "segbench")

#: What torchrun gives the worker of node 1 (one process per node).
TORCHRUN_NODE1 = {"TORCHELASTIC_RUN_ID": "none", "RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1"}
SRUN_TASK = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_NNODES": "2"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launcher_and_global_rank_from_the_environment():
    assert launcher({}) is None and is_global_zero({})
    assert launcher(TORCHRUN_NODE1) == "torchrun"
    assert not is_global_zero(TORCHRUN_NODE1)  # LOCAL_RANK=0 on node 1 is not the global rank 0
    assert is_global_zero({**TORCHRUN_NODE1, "RANK": "0", "GROUP_RANK": "0"})
    assert launcher({**SRUN_TASK, "SLURM_PROCID": "2"}) == "slurm"
    assert not is_global_zero({**SRUN_TASK, "SLURM_PROCID": "2"})
    assert is_global_zero({**SRUN_TASK, "SLURM_PROCID": "0"})
    assert launcher({**SRUN_TASK, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task: a plain run
    assert launcher({**SRUN_TASK, "SLURM_PROCID": "0", **TORCHRUN_NODE1}) == "torchrun"  # torchrun under srun
    assert not is_global_zero({"LOCAL_RANK": "0", "NODE_RANK": "1"})  # a rank Lightning started on node 1


def test_ranks_of_an_external_launcher_share_the_path_and_only_rank_0_owns_it(tmp_path):
    path = tmp_path / "train" / "default" / "2026-01-01_00-00-00"
    stale = {RUN_DIR_ENV: str(tmp_path / "elsewhere")}  # left by an earlier command: ignored
    node1 = claim_run_dir(path, environ={**TORCHRUN_NODE1, **stale})
    node0 = claim_run_dir(path, environ={**TORCHRUN_NODE1, "RANK": "0", "GROUP_RANK": "0", **stale})
    assert node1 == (path, False) and node0 == (path, True) and (path / RUN_MARKER).is_file()
    assert claim_run_dir(path, environ={**SRUN_TASK, "SLURM_PROCID": "3"}) == (path, False)
    # another run took the folder: no silent "-2" that the other nodes would not follow
    with pytest.raises(SegbenchError, match="run_dir=") as e:
        claim_run_dir(path, environ={**SRUN_TASK, "SLURM_PROCID": "0"})
    assert str(path) in str(e.value)
    assert not (tmp_path / "train" / "default" / (path.name + "-2")).exists()


def test_torchrun_ranks_agree_on_the_first_start_time_in_the_rendezvous_store():
    port = _free_port()
    server = torch.distributed.TCPStore(  # what torchrun's agent on node 0 hosts
        "127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30)
    )
    env = {**TORCHRUN_NODE1, "TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(port)
    first = shared_start_time(env, timeout=30)
    later = shared_start_time({**env, "RANK": "0"}, timeout=30)  # another node asks later: the same time
    assert first == later and server.get("segbench/start_time/none/0").decode() == first
    restarted = shared_start_time({**env, "TORCHELASTIC_RESTART_COUNT": "1"}, timeout=30)
    assert restarted != first  # an elastic restart is a new run (resume=true continues the old one)
    with pytest.raises(SegbenchError, match="SEGBENCH_START_TIME"):
        shared_start_time({**env, "TORCHELASTIC_USE_AGENT_STORE": "False"})
    with pytest.raises(
        SegbenchError, match=r"cannot reach torchrun's rendezvous store .*SEGBENCH_START_TIME"
    ):
        shared_start_time({**env, "MASTER_PORT": str(_free_port())}, timeout=1)  # nobody listens there


def test_srun_tasks_take_the_jobs_start_time(monkeypatch):
    task = {**SRUN_TASK, "SLURM_PROCID": "1", "SLURM_JOB_START_TIME": "1767225600"}
    want = __import__("datetime").datetime.fromtimestamp(1767225600).isoformat(timespec="microseconds")
    assert shared_start_time(task) == want
    assert shared_start_time({**task, "SEGBENCH_START_TIME": "2030-01-01T00:00:00"}) == "2030-01-01T00:00:00"
    with pytest.raises(SegbenchError, match=r"SLURM_JOB_START_TIME.*SEGBENCH_START_TIME"):
        shared_start_time(SRUN_TASK | {"SLURM_PROCID": "1"})
    # the command line: every task resolves the same run folder, whatever its own clock says
    env = dict(task)
    _set_start_time(env)
    assert env["SEGBENCH_START_TIME"] == want
    plain = {"SEGBENCH_START_TIME": "2000-01-01T00:00:00"}  # a plain command always takes its own clock
    _set_start_time(plain)
    assert not plain["SEGBENCH_START_TIME"].startswith("2000")


def test_a_requeued_slurm_job_finds_its_own_run(tmp_path):
    base = tmp_path / "train" / "default"
    for folder, job in [("2026-01-01_00-00-00", "4242"), ("2026-01-02_00-00-00", "9999")]:
        (base / folder / "checkpoints").mkdir(parents=True)
        (base / folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
        (base / folder / LAUNCH_FILE).write_text(json.dumps({"launcher": "slurm", "job_id": job}))
    (base / "2026-01-03_00-00-00").mkdir()  # the same job, requeued before any checkpoint: not resumable
    (base / "2026-01-03_00-00-00" / LAUNCH_FILE).write_text(json.dumps({"job_id": "4242"}))
    env = {**SRUN_TASK, "SLURM_PROCID": "0", "SLURM_RESTART_COUNT": "1"}
    assert requeued_run(tmp_path, "default", environ=env) == base / "2026-01-01_00-00-00"
    assert requeued_run(tmp_path, "default", environ={**env, "SLURM_RESTART_COUNT": "0"}) is None
    assert requeued_run(tmp_path, "default", environ={**env, "SLURM_JOB_ID": "1"}) is None


@pytest.mark.slow  # two tiny trainings
def test_a_requeued_slurm_job_continues_its_run_in_the_same_folder(synth_root, tmp_path, monkeypatch, capsys):
    from segbench.cli import main

    for k in ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_RESTART_COUNT", RUN_DIR_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # one task (no srun ranks): the batch script runs segbench
    args = tiny(synth_root, tmp_path, "trainer.limit_train_batches=1", "test_after_fit=false")
    assert main([*args, "trainer.max_epochs=1"]) == 0, capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    assert json.loads((run / LAUNCH_FILE).read_text())["job_id"] == "777"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM started the job again (scontrol requeue)
    assert main([*args, "trainer.max_epochs=2"]) == 0, capsys.readouterr().err
    assert run_dirs(tmp_path) == [run]  # no new folder: the same run, continued
    assert f"run folder: {run}" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2


def test_trainer_slurm_takes_nodes_and_tasks_from_the_job(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_NNODES", "3")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    cfg = compose("train", ["trainer=slurm", f"paths.output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.trainer.strategy) == (3, 4, "ddp")
    targets = [p["_target_"] for p in cfg.trainer.plugins]
    assert targets == [
        "segbench.callbacks.AtomicCheckpointIO",
        "pytorch_lightning.plugins.environments.SLURMEnvironment",
    ]
    assert cfg.trainer.plugins[1].auto_requeue is True
    cfg = compose("train", ["trainer=slurm", "trainer.num_nodes=2", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer.num_nodes == 2  # the command line wins


# -- two torchrun "nodes" on 127.0.0.1 -----------------------------------------------------------------


class SameDrawPerImage:
    """torchvision's ``BalancedPositiveNegativeSampler``, called per image with the same random state."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def __call__(self, matched_idxs):
        pos, neg = [], []
        for m in matched_idxs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                p, n = self.sampler([m])
            pos += p
            neg += n
        return pos, neg


class StepRecorder(pl.Callback):
    """Each rank writes ``steps_rank<k>.json`` into its run folder: its global step and, per step, the loss
    of its own batch and that batch's size (the loss DDP's averaged gradient follows is the mean over ranks).

    It also makes torchvision's anchor and RoI sampling draw the same for an image whichever process samples
    it, and with how many others (one process drawing for two images draws differently from two processes
    drawing for one each): :class:`SameDrawPerImage`."""

    def __init__(self) -> None:
        self.steps: list[list[float]] = []

    def on_fit_start(self, trainer, pl_module):
        for head in (pl_module.model.rpn, pl_module.model.roi_heads):
            head.fg_bg_sampler = SameDrawPerImage(head.fg_bg_sampler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append([trainer.global_step, float(outputs["loss"]), len(batch[0])])

    def on_train_end(self, trainer, pl_module):
        out = Path(trainer.default_root_dir) / f"steps_rank{trainer.global_rank}.json"
        doc = {"global_step": trainer.global_step, "world_size": trainer.world_size, "steps": self.steps}
        out.write_text(json.dumps(doc))


#: An honest comparison: the same seed; the same images in the same order per step (a DistributedSampler
#: in both runs: trainer=ddp_cpu, also with one process: rank r of 2 takes perm[r::2], one process perm[0:2]);
#: no random augmentation; no batch statistics (frozen BN); the same anchor and RoI draws per image
#: (StepRecorder). And every loss term a mean over images with equal weights, so that the mean of the ranks'
#: gradients (DDP) is the gradient of the batch of two: torchvision normalises the RPN and box losses by the
#: sampled count (256 anchors, box_batch_size_per_image RoIs per image: equal), but the mask loss by the
#: positive RoIs of the whole batch: box_batch_size_per_image=4 keeps one positive RoI (4 x 0.25) per image.
#: A constant lr high enough that the curve moves, low enough that it stays smooth (0.02 spikes).
EQUAL = [
    "trainer=ddp_cpu",
    "trainer.devices=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "data.limit_val=2",
    "data.train_transforms=[]",
    "model.net.norm_layer=frozen_batchnorm",
    "model.net.box_batch_size_per_image=4",
    "model.scheduler.name=constant",
    "model.optimizer.lr=0.005",
    "model.scheduler.warmup_steps=0",
    "test_after_fit=false",
    "+callbacks.steps._target_=tests.test_multinode.StepRecorder",
]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in (RUN_DIR_ENV, "SEGBENCH_START_TIME", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(k, None)  # left by in-process commands of other tests
    return env


def _loss_csv(run: Path) -> dict[int, float]:
    (path,) = run.glob("logs/*/metrics.csv")
    rows = [r for r in csv.DictReader(path.open()) if r.get("train/loss")]
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


@pytest.mark.slow
def test_two_torchrun_nodes_train_as_one_process_with_twice_the_batch(synth_root, tmp_path):
    port = _free_port()
    two = [*tiny(synth_root, tmp_path, *EQUAL), "name=two", "trainer.num_nodes=2", "data.batch_size=1"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
            + [f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}", "--max-restarts=0"]
            + ["--no-python", SEGBENCH, *two],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        for rank in (0, 1)
    ]
    one = [*tiny(synth_root, tmp_path, *EQUAL), "name=one", "trainer.num_nodes=1", "data.batch_size=2"]
    single = subprocess.run([SEGBENCH, *one], capture_output=True, text=True, env=_env(), timeout=600)
    logs = []
    try:
        for p in nodes:
            logs.append(p.communicate(timeout=600)[0])
    finally:
        for p in nodes:
            p.kill()
    for rank, (p, out) in enumerate(zip(nodes, logs, strict=True)):
        assert p.returncode == 0, f"node {rank}:\n{out[-3000:]}"
    assert single.returncode == 0, single.stderr[-3000:]

    # one run folder, written by global rank 0 only; both ranks wrote into it
    (run,) = run_dirs(tmp_path, "two")
    assert [p.name for p in (tmp_path / "train").iterdir()] in (["two", "one"], ["one", "two"])
    launch = json.loads((run / LAUNCH_FILE).read_text())
    assert launch["launcher"] == "torchrun" and launch["world_size"] == 2 and launch["num_nodes"] == 2
    assert f"run folder: {run}" in logs[0] and "run folder:" not in logs[1]
    # one set of checkpoints (rank 0 writes; the best and last.ckpt) and one CSV log
    ckpts = sorted(p.name for p in run.rglob("*.ckpt"))
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts
    assert len(list(run.glob("logs/*/metrics.csv"))) == 1
    # the same global step on both ranks, every rank a batch of one
    ranks = [json.loads((run / f"steps_rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["global_step"] for r in ranks] == [4, 4] and [r["world_size"] for r in ranks] == [2, 2]
    assert all(b == 1 for r in ranks for *_, b in r["steps"])
    assert [s for s, *_ in ranks[0]["steps"]] == [s for s, *_ in ranks[1]["steps"]] == [1, 2, 3, 4]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 4

    # the loss curve: mean over the two ranks (the global batch) vs the one process's batch of two
    (run1,) = run_dirs(tmp_path, "one")
    one_rank = json.loads((run1 / "steps_rank0.json").read_text())
    assert one_rank["world_size"] == 1 and all(b == 2 for *_, b in one_rank["steps"])
    csv2, csv1 = _loss_csv(run), _loss_csv(run1)
    rank0 = {s - 1: loss for s, loss, _ in ranks[0]["steps"]}  # CSV steps count from 0
    assert csv2 == pytest.approx(rank0, rel=1e-5)  # the CSV of the 2-node run logs rank 0's own batch
    mean2 = [(a[1] + b[1]) / 2 for a, b in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True)]
    curve1 = [csv1[s] for s in sorted(csv1)]
    print("2 nodes x batch 1 (mean of ranks):", [round(x, 4) for x in mean2])
    print("1 node  x batch 2 (CSV train/loss):", [round(x, 4) for x in curve1])
    assert len(curve1) == 4
    # the same model on the same images, then the same updates: equal up to the float rounding of the
    # all-reduce, until that flips a discrete choice (proposal top-k, NMS, matching) and the curves part
    # (here at step 5 by ~20%: 4 steps are compared). Unsynchronised ranks would differ from step 1 on.
    assert mean2[:3] == pytest.approx(curve1[:3], rel=1e-3)
    assert mean2 == pytest.approx(curve1, rel=0.02)
    assert curve1[-1] < 0.95 * curve1[0]  # not vacuous: the curve moves
