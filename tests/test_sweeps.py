"""Sweeps: ``segbench train -m`` runs through Hydra's multirun (sweepers, launchers), one run folder per job,
a sweep.csv row per job, the metric returned to the sweeper."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from segbench.cli import _wants_multirun, compose, main
from tests.test_training import TINY

#: The smallest training of a job: one step, one validation batch, no final evaluation.
SHORT = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test_after_fit=false"]


def sweep(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-m", *TINY, *SHORT, f"data.root={root}", f"paths.output_dir={out}", *extra]


def sweep_dirs(out: Path, name: str = "default") -> list[Path]:
    return sorted((out / "sweeps" / name).glob("*/"))


def rows(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "sweep.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_grid_sweep_writes_a_run_folder_per_job_and_sweep_csv(synth_root, tmp_path, capsys):
    code = main(sweep(synth_root, tmp_path, "seed=1,2", "model.optimizer.lr=0.01,0.02"))
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    (sd,) = sweep_dirs(tmp_path)
    assert not (tmp_path / "train").exists()  # jobs write under the sweep folder only
    table = rows(sd)
    assert [r["job"] for r in table] == ["0", "1", "2", "3"]
    assert list(table[0]) == ["job", "overrides", "best_val_segm_mAP", "wall_s", "run_dir", "status", "error"]
    combos = set()
    for r in table:
        run = Path(r["run_dir"])
        assert run == sd / r["job"] and r["status"] == "ok" and not r["error"]
        assert float(r["wall_s"]) > 0
        metrics = json.loads((run / "metrics.json").read_text())
        assert float(r["best_val_segm_mAP"]) == pytest.approx(metrics["best_val_segm_mAP"])
        assert metrics["global_step"] == 1 and metrics["run_dir"] == str(run)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["run_dir"] == str(run)  # each job's run_dir is Hydra's job folder
        assert cfg["callbacks"]["model_checkpoint"]["dirpath"] == str(run / "checkpoints")
        last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert last["global_step"] == 1
        assert (run / ".hydra" / "overrides.yaml").is_file() and (run / "train.log").is_file()
        words = dict(w.split("=", 1) for w in r["overrides"].split())
        combos.add((words["seed"], words["model.optimizer.lr"], cfg["seed"], cfg["model"]["optimizer"]["lr"]))
    assert combos == {(s, lr, int(s), float(lr)) for s in ("1", "2") for lr in ("0.01", "0.02")}
    assert f"summary: {sd / 'sweep.csv'}" in out.out and "4 job(s), 4 ok, 0 failed" in out.out


def test_a_bad_override_in_a_sweep_is_a_one_line_error(synth_root, tmp_path, capsys):
    for bad in (["model.nonexistent=1,2"], ["model.nonexistent=1", "seed=1,2"]):  # a sweep value, a fixed one
        code = main(sweep(synth_root, tmp_path, *bad))
        err = capsys.readouterr().err
        assert code == 2, err
        lines = [x for x in err.splitlines() if x.strip()]
        assert lines == [lines[0]] and lines[0].startswith("segbench: error: bad override: ")
        assert "model.nonexistent" in lines[0] and "Traceback" not in err
    assert not sweep_dirs(tmp_path)  # no job started: no sweep folder left behind


def test_a_failed_job_is_a_row_of_its_own_and_the_others_run(synth_root, tmp_path, capsys):
    code = main(sweep(synth_root, tmp_path, "model.net.backbone=no_such_net,resnet18_fpn"))
    out = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out.err
    job_line = next(x for x in out.err.splitlines() if x.startswith("segbench: job 0 "))
    assert "no_such_net" in job_line and "Unknown backbone" in job_line
    assert out.err.splitlines()[-1].startswith("segbench: error: the sweep stopped: job 0 failed")
    (sd,) = sweep_dirs(tmp_path)
    failed, ok = rows(sd)
    assert failed["status"] == "failed" and "Unknown backbone 'no_such_net'" in failed["error"]
    assert failed["best_val_segm_mAP"] == "" and not (Path(failed["run_dir"]) / "metrics.json").exists()
    assert ok["status"] == "ok" and ok["best_val_segm_mAP"] != ""


def test_sweep_options():
    assert _wants_multirun(["hparams_search=maskrcnn_optuna"]) and not _wants_multirun(
        ["hparams_search=null"]
    )
    assert not _wants_multirun(["seed=1,2"])


def test_multirun_and_cfg_together_is_a_usage_error(capsys):
    assert main(["train", "-m", "seed=1,2", "--cfg"]) == 2
    assert "drop -m" in capsys.readouterr().err


def test_only_train_sweeps(capsys):
    assert main(["eval", "--multirun", "ckpt_path=x.ckpt"]) == 2
    assert "sweeps train only" in capsys.readouterr().err


def test_the_optuna_search_and_the_submitit_launchers_compose(tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from segbench.cli import _register_resolvers

    cfg = compose("train", ["hparams_search=maskrcnn_optuna"])
    assert cfg.optimized_metric == "best_val_segm_mAP"
    assert main(["train", "hparams_search=maskrcnn_optuna", "--cfg"]) == 0
    assert "optimized_metric: best_val_segm_mAP" in capsys.readouterr().out
    for launcher, target in (("submitit_local", "LocalLauncher"), ("submitit_slurm", "SlurmLauncher")):
        with initialize_config_module(config_module="segbench.configs", version_base="1.3"):
            _register_resolvers()
            full = hydra_compose(
                config_name="train",
                overrides=["hparams_search=maskrcnn_optuna", f"hydra/launcher={launcher}"],
                return_hydra_config=True,
            )
        sweeper = full.hydra.sweeper
        assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
        assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 1234
        assert set(sweeper.params) == {"model.optimizer.lr", "model.net.box_batch_size_per_image"}
        assert full.hydra.launcher._target_.endswith(target)
        assert full.hydra.job.chdir is False
        assert OmegaConf.to_container(full.hydra.sweep)["subdir"] == "${hydra.job.num}"


@pytest.mark.slow
def test_an_optuna_search_gets_each_trials_metric(synth_root, tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = sweep(synth_root, tmp_path, "hparams_search=maskrcnn_optuna", "hydra.sweeper.n_trials=2")
    args.remove("-m")  # hparams_search=... is a multirun by itself
    code = main(args)
    assert code == 0, capsys.readouterr().err[-3000:]
    (sd,) = sweep_dirs(tmp_path)
    table = rows(sd)
    assert len(table) == 2 and {r["status"] for r in table} == {"ok"}
    result = yaml.safe_load((sd / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(float(r["best_val_segm_mAP"]) for r in table))
    for r in table:  # the trials' values from the search space
        words = dict(w.split("=", 1) for w in r["overrides"].split())
        assert 0.005 <= float(words["model.optimizer.lr"]) <= 0.05
        assert words["model.net.box_batch_size_per_image"] in ("32", "64", "128")


@pytest.mark.slow
def test_a_sweep_on_the_submitit_local_launcher(synth_root, tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    code = main(sweep(synth_root, tmp_path, "hydra/launcher=submitit_local", "seed=1,2"))
    assert code == 0, capsys.readouterr().err[-3000:]
    (sd,) = sweep_dirs(tmp_path)
    table = rows(sd)
    assert [(r["job"], r["status"]) for r in table] == [("0", "ok"), ("1", "ok")]
    assert (sd / ".submitit").is_dir()  # the jobs ran in submitit's worker processes
    for r in table:
        assert json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["global_step"] == 1


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_resume_continues_its_jobs(synth_root, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = sweep(synth_root, tmp_path, "seed=1,2", "trainer.limit_train_batches=2", "trainer.max_epochs=2")
    args = [str(Path(sys.executable).parent / "segbench"), *args]
    term = ["+callbacks.term._target_=tests.test_faults.SigtermAtStep", "+callbacks.term.step=1"]
    p = subprocess.run([*args, *term], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 143, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "training stopped by SIGTERM after step 1" in p.stderr
    (sd,) = sweep_dirs(tmp_path)
    (row,) = rows(sd)  # the sweep stopped: job 1 never started
    assert row["status"] == "preempted" and "SIGTERM" in row["error"]
    last = sd / "0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1

    p = subprocess.run(
        [*args, f"hydra.sweep.dir={sd}", "resume=true"], capture_output=True, text=True, env=env, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    table = rows(sd)
    assert [(r["job"], r["status"]) for r in table] == [("0", "ok"), ("1", "ok")]
    for r in table:  # job 0 continued from step 1, job 1 started in its own folder
        assert json.loads((sd / r["job"] / "metrics.json").read_text())["global_step"] == 4
