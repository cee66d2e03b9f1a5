"""Every config option composes, and everything it names instantiates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segbench.cli import COMMANDS, compose, config_dir

GROUPS = ["data", "model", "model/optimizer", "trainer", "callbacks", "logger", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_train_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose("train", [f"{group}={option}", f"paths.output_dir={tmp_path}", f"data.root={tmp_path}"])
    OmegaConf.resolve(cfg)
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    if cfg.model.net.weights in ("coco", "imagenet"):  # no network here: the rest of the model still builds
        cfg.model.net.weights = None
        cfg.model.net.norm_layer = "frozen_batchnorm"
    module = instantiate(
        cfg.model,
        num_classes=2,
        class_names=["a", "b"],
        categories=cats,
        label_to_cat_id={1: 1, 2: 2},
        _convert_="all",
    )
    assert module.model.roi_heads.box_predictor.cls_score.out_features == 3
    assert isinstance(module.optimizer_factory(list(module.model.parameters())[:2]), torch.optim.Optimizer)
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.batch_size >= 1
    if cfg.data.train_transforms:
        from segbench.data.datamodule import build_transforms

        assert build_transforms(dm.train_transform_specs) is not None
    for c in (cfg.get("callbacks") or {}).values():
        instantiate(c)
    for name, c in (cfg.get("logger") or {}).items():
        if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            continue
        instantiate(c)
    tr = OmegaConf.to_container(cfg.trainer)
    if tr["accelerator"] == "gpu":  # no GPU here: check the rest of the trainer on the CPU
        tr.update(accelerator="cpu", devices=1, strategy="auto", precision="bf16-mixed")
    if tr.get("strategy") == "ddp":
        tr.update(devices=1, strategy="auto")
    trainer = instantiate(tr, logger=False, enable_checkpointing=False)
    assert trainer is not None


REQUIRED = {
    "eval": ["ckpt_path=x.ckpt"],
    "score": ["gt=a.json", "pred=b.json"],
    "predict": ["input=a.png"],
    "export": ["ckpt_path=x.ckpt"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_config_composes(name, tmp_path):
    cmd = COMMANDS[name]
    extra = [o for o in REQUIRED.get(cmd.config, [])]
    cfg = compose(cmd.config, extra)
    OmegaConf.resolve(cfg)
    assert not OmegaConf.missing_keys(cfg)


def test_experiments_point_at_real_files():
    for exp in options("experiment"):
        cfg = compose(
            "train", [f"experiment={exp}"] + (["data.root=mine"] if exp == "coco_finetune_gpu" else [])
        )
        assert cfg.name == exp
        if exp.endswith("_cpu") and exp != "synth_cpu":
            root = (Path(__file__).resolve().parents[1] / cfg.data.root).resolve()
            assert root.name in ("dsb2018", "nuts")
