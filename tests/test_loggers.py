"""The experiment trackers: logger=mlflow, logger=wandb (offline), logger=tensorboard. One tiny training run
with every installed tracker writes a run that each test reads back with the tracker's own reader.

That run is shared by the module and marked slow: besides the training and the final evaluation, MLflow's
first use of a new SQLite store creates its tables (Alembic migrations, several seconds) and W&B starts its
service process. The pieces without training are fast tests."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from segbench.callbacks import TrackRun, flatten_config
from segbench.cli import main

TRACKERS = [name for name in ("mlflow", "wandb", "tensorboard") if importlib.util.find_spec(name)]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> dict:
    """``segbench train debug=tiny logger=[<every installed tracker>]`` on 4 + 2 synthetic images."""
    if not TRACKERS:
        pytest.skip("no tracker installed (pip install 'segbench[track]' tensorboard)")
    from segbench.data.synthetic import generate

    tmp = tmp_path_factory.mktemp("trackers")
    root = tmp / "data"
    generate(root, num_train=4, num_val=2, image_size=64, min_radius=8, max_radius=16, seed=3)
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")  # no network, whatever the config says
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # keep $HOME clean
            mp.setenv(var, str(tmp / var.lower()))
        argv = [
            "train",
            "debug=tiny",
            "model.net.min_size=64",
            "model.net.max_size=64",
            f"data.root={root}",
            f"paths.output_dir={out}",
            f"logger=[{','.join(TRACKERS)}]",  # each option file adds the CSV logger too
        ]
        try:
            code = main(argv)
        finally:
            if "wandb" in TRACKERS:
                import wandb

                if wandb.run is not None:  # the run failed before TrackRun.publish finished it
                    wandb.finish()
    assert code == 0
    (run_dir,) = (out / "train" / "default").glob("*/")
    return {
        "out": out,
        "run_dir": run_dir,
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "config": OmegaConf.load(run_dir / "config.yaml"),
    }


# --- MLflow ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_run_has_config_params_step_metrics_checkpoint_and_report(tracked_run):
    pytest.importorskip("mlflow", reason="logger=mlflow needs pip install 'segbench[track]'")
    from mlflow.tracking import MlflowClient

    run_dir, metrics, cfg = tracked_run["run_dir"], tracked_run["metrics"], tracked_run["config"]
    client = MlflowClient(f"sqlite:///{tracked_run['out']}/mlflow.db")  # the store logger=mlflow writes
    exp = client.get_experiment_by_name("default")  # experiment_name: ${name}
    (run,) = client.search_runs([exp.experiment_id])
    run_id = run.info.run_id
    assert run.data.tags["segbench.run_dir"] == str(run_dir)

    # params: the resolved config, dotted keys, values as in config.yaml
    params = run.data.params
    assert params["model.net.backbone"] == str(cfg.model.net.backbone)
    assert params["data.batch_size"] == "2" and params["trainer.limit_train_batches"] == "2"
    assert params["callbacks.model_checkpoint.monitor"] == "val/segm_mAP"
    assert len(params) > 100

    # metrics of every logged step: debug=tiny trains 2 steps with log_every_n_steps=1
    history = client.get_metric_history(run_id, "train/loss_mask")
    assert [m.step for m in history] == [0, 1]
    assert all(m.value > 0 for m in history)
    assert [m.step for m in client.get_metric_history(run_id, "val/segm_mAP")] == [1]
    # the final evaluation's scores, equal to metrics.json's
    assert run.data.metrics["final/segm_AP"] == pytest.approx(metrics["val"]["segm_AP"])
    assert run.data.metrics["final/best_val_segm_mAP"] == pytest.approx(metrics["best_val_segm_mAP"])

    # artifacts: the report files and the best checkpoint as it is at the end (thresholds stored in it)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "config.yaml", "eval", "checkpoints"} <= top
    assert {"eval/per_image.csv", "eval/metrics.json", "eval/results.json"} <= {
        a.path for a in client.list_artifacts(run_id, "eval")
    }
    best = Path(metrics["best_checkpoint"])
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [f"checkpoints/{best.name}"]
    dl = tracked_run["out"].parent / "downloads"
    dl.mkdir(exist_ok=True)
    local = Path(client.download_artifacts(run_id, f"checkpoints/{best.name}", str(dl)))
    assert _sha(local) == _sha(best)
    assert not [a for a in top if a.endswith(".ckpt") or a.startswith("wandb") or a.startswith("tb")]
    report = Path(client.download_artifacts(run_id, "metrics.json", str(dl)))
    assert json.loads(report.read_text())["global_step"] == 2


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- Weights & Biases, offline -----------------------------------------------------------------------------


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``.wandb`` file.

    wandb >= 0.18 has no Python reader of its own for this file any more (it moved into the Go wandb-core
    service), so this reads its LevelDB-log framing here: a 7-byte ``:W&B`` header, then 32 KiB blocks of
    chunks (4-byte checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last), each record a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a .wandb file"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the rest of a block too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def _key(item) -> str:
    """A record item's key: keys with ``/`` (``train/loss_mask``) are stored split, in ``nested_key``."""
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_run_holds_config_step_metrics_summary_and_report(tracked_run):
    pytest.importorskip("wandb", reason="logger=wandb needs pip install 'segbench[track]'")
    run_dir, metrics, cfg = tracked_run["run_dir"], tracked_run["metrics"], tracked_run["config"]
    (offline,) = (run_dir / "wandb").glob("offline-run-*/")
    (log_file,) = offline.glob("run-*.wandb")
    records = _wandb_records(log_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds and "exit" in kinds  # a whole run, finished

    config = {
        _key(i): json.loads(i.value_json) for r in records if r.HasField("config") for i in r.config.update
    }
    assert config["model.net.backbone"] == cfg.model.net.backbone
    assert config["data.batch_size"] == 2

    rows = [
        {_key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")
    ]
    steps = [row["trainer/global_step"] for row in rows if "train/loss_mask" in row]
    assert steps == [0, 1]
    summary = {
        _key(i): json.loads(i.value_json) for r in records if r.HasField("summary") for i in r.summary.update
    }
    assert summary["final/segm_AP"] == pytest.approx(metrics["val"]["segm_AP"])

    files = offline / "files"
    for name in ("metrics.json", "eval/per_image.csv", "eval/metrics.json"):
        assert (files / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert not list(files.rglob("*.ckpt"))


# --- TensorBoard -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tensorboard_event_files_hold_step_metrics_and_the_config(tracked_run):
    pytest.importorskip("tensorboard", reason="logger=tensorboard needs pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, cfg = tracked_run["run_dir"], tracked_run["config"]
    (log_dir,) = (run_dir / "tb").glob("*/")
    assert list(log_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    assert {"train/loss_mask", "train/lr", "val/segm_mAP"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss_mask")] == [0, 1]
    hparams = OmegaConf.load(log_dir / "hparams.yaml")  # TrackRun's config, through log_hyperparams
    assert hparams["model.net.backbone"] == cfg.model.net.backbone


@pytest.mark.slow
def test_csv_logs_get_no_flattened_config(tracked_run):
    """The CSV logger is left alone: config.yaml lies beside its files."""
    (csv_dir,) = tracked_run["run_dir"].glob("logs/*/")
    assert (csv_dir / "metrics.csv").is_file()
    hparams = csv_dir / "hparams.yaml"  # written when something is logged as hyperparameters
    assert not hparams.exists() or "model.net.backbone" not in hparams.read_text()


# --- the pieces, without training --------------------------------------------------------------------------


def test_flatten_config_dots_lists_cuts_long_values_and_cleans_keys():
    flat = flatten_config(
        {"a": {"b": [1, {"c": None}], "e": [], "s": "x" * 7000}, "odd key!": True, "n": {"@x": 1.5}},
        max_len=6000,
    )
    assert flat == {
        "a.b.0": 1,
        "a.b.1.c": None,
        "a.e": "[]",
        "a.s": "x" * 6000,
        "odd key_": True,
        "n._x": 1.5,
    }
    assert flatten_config({}) == {}


def test_report_files_leave_out_checkpoints_and_tracker_folders(tmp_path):
    for rel in (
        "metrics.json",
        "config.yaml",
        "eval/per_image.csv",
        "logs/v0/metrics.csv",
        "checkpoints/last.ckpt",
        "checkpoints/notes.txt",
        "hpc_ckpt_1.ckpt",
        "wandb/offline-run-1/run-1.wandb",
        "tb/v0/events.out.tfevents.1",
        "metrics.json.tmp",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    got = [p.relative_to(tmp_path).as_posix() for p in TrackRun(tmp_path).report_files()]
    assert got == ["config.yaml", "eval/per_image.csv", "logs/v0/metrics.csv", "metrics.json"]


def test_a_failing_tracker_is_named_in_the_log_and_the_run_goes_on(tmp_path, caplog):
    pytest.importorskip("mlflow", reason="logger=mlflow needs pip install 'segbench[track]'")
    from pytorch_lightning.loggers import MLFlowLogger

    class Down(MLFlowLogger):
        @property
        def experiment(self):
            raise ConnectionError("tracking server 127.0.0.1:9 refused the connection")

    (tmp_path / "metrics.json").write_text("{}")
    trainer = SimpleNamespace(
        is_global_zero=True,
        fast_dev_run=False,
        global_step=2,
        loggers=[Down(tracking_uri="http://127.0.0.1:9")],
    )
    with caplog.at_level(logging.ERROR, logger="segbench.callbacks"):
        TrackRun(tmp_path).publish(trainer, {"val": {"segm_AP": 0.5}, "best_checkpoint": None})
    assert "could not publish" in caplog.text and "Down" in caplog.text and "refused" in caplog.text


def test_a_missing_tracker_package_is_a_one_line_config_error(synth_root, tmp_path, capsys, monkeypatch):
    import pytorch_lightning.loggers.mlflow as lightning_mlflow
    from lightning_utilities.core.imports import RequirementCache

    # what Lightning sees where neither mlflow nor mlflow-skinny is installed
    monkeypatch.setattr(lightning_mlflow, "_MLFLOW_AVAILABLE", RequirementCache("mlflow-not-installed>=1"))
    code = main(
        ["train", "debug=tiny", f"data.root={synth_root}", f"paths.output_dir={tmp_path}", "logger=mlflow"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "MLFlowLogger" in err and "mlflow-not-installed" in err and "Traceback" not in err


@pytest.mark.parametrize("log_checkpoint", [True, False])
def test_publish_mirrors_the_run_folder_into_mlflow_artifacts(tmp_path, log_checkpoint):
    pytest.importorskip("mlflow", reason="logger=mlflow needs pip install 'segbench[track]'")
    from pytorch_lightning.loggers import MLFlowLogger

    calls = []

    class Client:  # records what a tracking server would receive
        def log_artifact(self, run_id, path, artifact_path=None):
            calls.append(("artifact", Path(path).relative_to(tmp_path).as_posix(), artifact_path))

        def log_batch(self, run_id, metrics=(), **kwargs):
            calls.extend(("metric", m.key, m.value, m.step) for m in metrics)

    class Recorded(MLFlowLogger):
        experiment = Client()
        run_id = "r1"

    for rel in ("metrics.json", "eval/per_image.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    trainer = SimpleNamespace(
        is_global_zero=True,
        fast_dev_run=False,
        global_step=7,
        loggers=[Recorded(tracking_uri="http://127.0.0.1:9")],
    )
    result = {
        "val": {"segm_AP": 0.25, "analysis": {"x": 1}, "ok": True},
        "best_val_segm_mAP": 0.5,
        "best_checkpoint": str(tmp_path / "checkpoints/best.ckpt"),
    }
    TrackRun(tmp_path, log_checkpoint=log_checkpoint).publish(trainer, result)
    assert ("metric", "final/segm_AP", 0.25, 7) in calls and (
        "metric",
        "final/best_val_segm_mAP",
        0.5,
        7,
    ) in calls
    assert [c[1] for c in calls if c[0] == "metric"] == ["final/segm_AP", "final/best_val_segm_mAP"]
    artifacts = [c[1:] for c in calls if c[0] == "artifact"]
    expected = [("eval/per_image.csv", "eval"), ("metrics.json", None)]
    assert artifacts == expected + ([("checkpoints/best.ckpt", "checkpoints")] if log_checkpoint else [])
