"""Every config option composes, and everything it names instantiates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segbench.callbacks import AtomicCheckpointIO
from segbench.cli import COMMANDS, UsageError, _load, compose, config_dir

GROUPS = ["data", "model", "model/optimizer", "trainer", "callbacks", "logger", "experiment", "debug"]


def options(group: str) -> list[str]:
    """The selectable options of a config group; ``_name_.yaml`` files are shared bases, not options."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


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

        assert len(build_transforms(dm.train_transform_specs)) == len(cfg.data.train_transforms)
    for c in (cfg.get("callbacks") or {}).values():
        spec = OmegaConf.to_container(c, resolve=True)
        spec.pop(
            "enabled", None
        )  # the entry's switch (segbench.commands.train._instantiate_all): on or off, it must build
        instantiate(spec)
    for name, c in (cfg.get("logger") or {}).items():
        if name in ("mlflow", "wandb"):
            continue  # instantiated for real by tests/test_loggers.py (a store takes seconds to create)
        if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            continue
        instantiate(c)
    tr = OmegaConf.to_container(cfg.trainer)
    if tr["accelerator"] == "gpu":  # no GPU here: check the rest of the trainer on the CPU
        tr.update(accelerator="cpu", devices=1, strategy="auto", precision="bf16-mixed")
    if tr.get("strategy") == "ddp":
        tr.update(devices=1, strategy="auto")
    trainer = instantiate(tr, logger=False, enable_checkpointing=False)
    assert trainer.gradient_clip_val == tr["gradient_clip_val"]
    assert trainer.accumulate_grad_batches == tr["accumulate_grad_batches"]
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


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
    OmegaConf.resolve(cfg)  # every interpolation resolves
    keys = documented_keys(_load(cmd.target).__doc__ or "")
    assert len(keys) >= 2, f"segbench {name}: its docstring lists no 'Keys:'"
    missing = [k for k in keys if OmegaConf.select(cfg, k, default=_ABSENT) is _ABSENT]
    assert not missing, f"segbench {name} --help names keys its config does not have: {missing}"


_ABSENT = object()


def documented_keys(doc: str) -> list[str]:
    """The config keys a command's docstring lists after ``Keys:``, up to the sentence's end (outside
    parentheses; patterns such as ``data.<split>_ann`` or ``tolerances.{box,mask}`` are skipped)."""
    import re

    text = doc.split("Keys:", 1)[1] if "Keys:" in doc else ""
    depth, flat = 0, []
    for k, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        elif depth == 0:
            if ch == "." and (k + 1 == len(text) or text[k + 1].isspace()):
                break  # the end of the Keys sentence
            flat.append(ch)
    words = re.sub(r"\S*(<[^>]*>|\{[^}]*\})\S*", " ", "".join(flat))
    return [w for w in re.findall(r"[A-Za-z_][\w.]*", words) if w not in ("or", "and")]


def test_documented_keys_reads_the_keys_paragraph():
    doc = (
        "Do it.\n\n    Keys: data.root (or data.<split>_ann + data.image_root), out, tolerances.{box,mask},\n"
        "    ckpt_path | exported (a file), fix (write x, y).\n\n    Returns more."
    )
    assert documented_keys(doc) == ["data.root", "out", "ckpt_path", "exported", "fix"]


def test_experiments_point_at_real_files():
    for exp in options("experiment"):
        cfg = compose(
            "train", [f"experiment={exp}"] + (["data.root=mine"] if exp == "coco_finetune_gpu" else [])
        )
        assert cfg.name == exp
        if exp.endswith("_cpu") and exp != "synth_cpu":
            root = (Path(__file__).resolve().parents[1] / cfg.data.root).resolve()
            assert root.name in ("dsb2018", "nuts")


# --- option files hold only what differs from their shared base ---------------------------------------


def _leaves(node, prefix: str = "") -> dict:
    """``{"net.backbone": value, ...}`` for a nested dict; lists are leaves."""
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _own(group: str, option: str) -> dict:
    """The keys written in the option file itself (its defaults list removed)."""
    raw = OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{option}.yaml"))
    raw.pop("defaults", None)
    return raw


def _composed(group: str, option: str) -> dict:
    """The option as composed into a command config, unresolved."""
    if group == "baseline":
        cfg = compose("compare", [f"baseline@baselines.threshold={option}"]).baselines.threshold
    else:
        root = ["data.root=R"] if (group, option) == ("data", "coco") else []  # coco's root is required
        cfg = compose("train", [f"{group}={option}", *root])[group]
    return OmegaConf.to_container(cfg, resolve=False)


def test_model_options_set_only_their_backbone():
    from segbench.models.maskrcnn import BACKBONES

    base = _leaves(_composed("model", "maskrcnn_r18"))
    seen = set()
    for option in options("model"):
        raw = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / f"{option}.yaml"))
        assert raw == {"defaults": ["_base_", "_self_"], "net": {"backbone": raw["net"]["backbone"]}}, option
        backbone = raw["net"]["backbone"]
        assert backbone in BACKBONES and backbone not in seen, (option, backbone)
        seen.add(backbone)
        full = _leaves(_composed("model", option))
        assert full.keys() == base.keys(), option  # nothing lost from the base
        assert {k for k in full if full[k] != base[k]} <= {"net.backbone"}, option
    # the base itself is no option: its backbone is required
    assert OmegaConf.is_missing(OmegaConf.load(config_dir() / "model" / "_base_.yaml").net, "backbone")
    with pytest.raises(UsageError, match="model.net.backbone"):
        compose("train", ["model=_base_"])
    assert len(base) > 30  # the shared keys are really there: net.*, scheduler.*, optimizer.*, ...


def test_data_options_set_only_what_differs_from_coco():
    base = _leaves(_composed("data", "coco"))
    for option in options("data"):
        if option == "coco":
            continue
        own = _own("data", option)
        assert set(own) <= {"root", "train_transforms"}, option
        full = _leaves(_composed("data", option))
        assert full.keys() == base.keys(), option
        assert {k for k in full if full[k] != base[k]} == set(own), option


@pytest.mark.parametrize("group", ["model", "data", "baseline"])
def test_option_files_copy_nothing_from_their_base(group):
    """No key an option file writes holds the value it would inherit anyway (a copy of the base)."""
    bases = {"model": "_base_", "data": "coco", "baseline": "_base_"}
    base_file = OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{bases[group]}.yaml"))
    base_file.pop("defaults", None)
    inherited = _leaves(base_file)
    for option in options(group):
        if option == bases[group]:
            continue
        for key, value in _leaves(_own(group, option)).items():
            assert key not in inherited or inherited[key] != value, f"{group}/{option}.yaml copies {key}"


def test_baselines_share_their_common_options():
    shared = _own("baseline", "_base_")
    edges = _own("baseline", "_edges_")
    for option in options("baseline"):
        own = _own("baseline", option)
        assert not set(own) & set(shared), option  # listed before _base_: a key in both would be overridden
        full = _composed("baseline", option)
        assert {k: full[k] for k in shared} == shared, option
        if option in ("sobel", "laplace"):
            assert own == {} and full == {**edges, **shared}, option
        else:
            assert list(full) == [*own, *shared], option
