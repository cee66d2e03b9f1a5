"""``segbench train [experiment=NAME] [data.root=DIR] [key=value ...]``."""

from __future__ import annotations

import copy
import logging
import os
import time
from datetime import datetime
from importlib.resources import files
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from segbench.io import atomic_write_text, write_json
from segbench.report.tables import format_metrics_table
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

#: The file in a run folder that holds the recipe ``experiment=auto`` chose: an experiment config that
#: ``segbench train experiment=<run folder>/recipe.yaml`` runs again exactly (the rules are not re-applied).
RECIPE_FILE = "recipe.yaml"
#: The groups whose choice a saved recipe always names (the train config's defaults, or the user's choice).
_RECIPE_GROUPS = ("data", "model", "trainer")
#: Overrides that belong to one run, not to its recipe: never written into recipe.yaml.
_RUN_KEYS = ("run_dir", "resume", "ckpt_path", "name", "budget", "recipe", "hydra", "experiment", "debug")


def _rebase(cfg: DictConfig, old: str, new: str) -> None:
    """Replace the prefix ``old`` by ``new`` in every string value of a resolved config (resume: the
    earlier run's folder replaces the new one everywhere it appears)."""
    for key in list(cfg.keys()):
        v = cfg[key]
        if isinstance(v, DictConfig):
            _rebase(v, old, new)
        elif isinstance(v, str) and v.startswith(old):
            cfg[key] = new + v[len(old) :]


def _launch_record() -> dict:
    """What :data:`~segbench.training.LAUNCH_FILE` records of the external launcher (torchrun or srun)."""
    env = os.environ
    slurm = "SLURM_JOB_ID" in env and "TORCHELASTIC_RUN_ID" not in env
    return {
        "launcher": "slurm" if slurm else "torchrun",
        "job_id": env.get("SLURM_JOB_ID") if slurm else env.get("TORCHELASTIC_RUN_ID"),
        "world_size": int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1),
        "num_nodes": int(env.get("GROUP_WORLD_SIZE") or env.get("SLURM_NNODES") or 1),
        "start_time": env.get("SEGBENCH_START_TIME"),
    }


def _instantiate_all(group: DictConfig | None) -> list:
    """The objects of a callbacks / logger group; an entry with ``enabled: false`` is left out (the key is
    the entry's switch, e.g. ``callbacks.ema.enabled=true``, not an argument of its class)."""
    if not group:
        return []
    out = []
    for c in group.values():
        if c is None or "_target_" not in c:
            continue
        spec = OmegaConf.to_container(c, resolve=True)
        if not spec.pop("enabled", True):
            continue
        out.append(instantiate(spec))
    return out


def build_run(cfg: DictConfig, run_dir: Path, **data_kwargs):
    """The data module (set up for fit), the LightningModule and the Trainer that ``cfg`` names, for a run
    in ``run_dir`` (``segbench train`` and each run of ``segbench advise``)."""
    dm = instantiate(cfg.data, **data_kwargs, _convert_="all")
    dm.setup("fit")
    train_ds = dm.train_coco
    module = instantiate(
        cfg.model,
        num_classes=train_ds.num_classes,
        class_names=train_ds.class_names,
        categories=train_ds.categories,
        label_to_cat_id=train_ds.label_to_cat_id,
        _convert_="all",
    )
    trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=_instantiate_all(cfg.get("logger")) or False,
        default_root_dir=str(run_dir),
        _convert_="all",
    )
    return dm, module, trainer


# --------------------------------------------------------------------------------------------------
# experiment=auto: the recipe chosen from the data and the machine (segbench.recipe)
# --------------------------------------------------------------------------------------------------


def _auto(cfg: DictConfig) -> bool:
    rc = cfg.get("recipe")
    return isinstance(rc, DictConfig) and bool(rc.get("auto"))


def _plain(value):
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    )


def _search_dirs(overrides: list[str]) -> list[Path]:
    """The shipped config folder and the user's (``hydra.searchpath=[file://DIR]``, from ``--config-dir``)."""
    dirs = [Path(str(files("segbench.configs")))]
    for o in overrides:
        if o.startswith("hydra.searchpath="):
            for item in o.split("=", 1)[1].strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://"):
                    dirs.append(Path(item[len("file://") :]))
    return dirs


def _leaves(node, prefix: str = "") -> dict:
    if not isinstance(node, dict) or not node:
        return {prefix: node} if prefix else {}
    out: dict = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _option_keys(group: str, option: str, dirs: list[Path]) -> list[str]:
    """The keys an option file of a config group writes itself (its defaults list aside), as full keys."""
    for d in dirs:
        path = d / group / f"{option}.yaml"
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            raw = OmegaConf.to_container(OmegaConf.create(text) if text.strip() else OmegaConf.create({}))
            raw = raw if isinstance(raw, dict) else {}
            raw.pop("defaults", None)
            prefix = "" if "@package _global_" in text else group.replace("/", ".")
            return [f"{prefix}.{k}" if prefix else k for k in _leaves(raw)]
    return []


def _is_group(key: str, dirs: list[Path]) -> bool:
    if "/" in key:
        return True
    return "." not in key and any((d / key).is_dir() for d in dirs)


def _parse(overrides: list[str]) -> list[tuple[str, str, object, bool]]:
    """``(override, key, value, deleted)`` of each command-line override that Hydra can parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except Exception:  # noqa: BLE001 - compose() accepted it already; an odd one is no key of the recipe
            continue
        value = None if o.is_delete() else o.value()
        out.append((text, o.key_or_group.lstrip("+~"), value, o.is_delete()))
    return out


def user_keys(overrides: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The keys the user set on the command line, each with the override that set it: ``(values, groups)``.

    A value override (``model.net.min_size=256``) sets its key; a group selection (``debug=tiny``,
    ``trainer=gpu``) sets the keys its option file writes. ``groups`` maps each selected group to its option
    (``{"trainer": "gpu"}``)."""
    dirs = _search_dirs(overrides)
    keys: dict[str, str] = {}
    groups: dict[str, str] = {}
    for text, key, value, _ in _parse(overrides):
        key = key.split("@", 1)[0]
        if key.startswith("hydra"):
            continue
        if not _is_group(key, dirs):
            keys[key] = text
            continue
        groups[key] = value
        if key == "experiment":  # the recipe switch itself, or a saved recipe: not a key of the rules
            continue
        for option in value if isinstance(value, list | tuple) else [value]:
            if option is not None:
                for k in _option_keys(key, str(option), dirs):
                    keys.setdefault(k, text)
    return keys, groups


def _current(cfg: DictConfig) -> dict:
    from segbench.recipe import CONTEXT_KEYS, WEIGHTS_MASK_HEAD

    current = {k: _plain(OmegaConf.select(cfg, k, default=None)) for k in CONTEXT_KEYS}
    current[WEIGHTS_MASK_HEAD] = _file_mask_head(current.get("model.net.weights"))
    return current


def _file_mask_head(weights) -> list[int] | None:
    """The mask head widths of a weights file (``model.net.weights=FILE``), so that the recipe builds the head
    the file fits; ``None`` for no file, COCO / ImageNet weights, or a file the model build will refuse itself
    (with its own error)."""
    from segbench.models.checkpoint import read_weights
    from segbench.models.maskrcnn import _resolve_weights, mask_head_widths

    try:
        source = _resolve_weights(weights)
        return mask_head_widths(read_weights(source)) if isinstance(source, Path) else None
    except SegbenchError:
        return None


def _apply(cfg: DictConfig, values: dict) -> None:
    with open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def _probe_skipped(cfg: DictConfig) -> str | None:
    from segbench.training import launcher

    if not cfg.recipe.get("probe", True):
        return "recipe.probe=false"
    if launcher() is not None:
        return f"a rank of a {launcher()} launch: every rank must choose the same recipe, and timings differ"
    return None


def _probe(cfg: DictConfig, values: dict, dm, machine, stats):
    """Time the recipe's training steps on this machine (segbench.recipe.probe_machine)."""
    from segbench.recipe import probe_machine

    trial = copy.deepcopy(cfg)
    _apply(trial, values)
    trial.model.channels_last = False  # float32 is timed as it runs; the bfloat16 pass switches to NHWC
    probe_dm = instantiate(trial.data, num_workers=0, persistent_workers=False, _convert_="all")
    probe_dm.train_coco, probe_dm.val_coco = dm.train_coco, dm.val_coco  # opened once
    ds = dm.train_coco
    module = instantiate(
        trial.model,
        num_classes=ds.num_classes,
        class_names=ds.class_names,
        categories=ds.categories,
        label_to_cat_id=ds.label_to_cat_id,
        _convert_="all",
    )
    device = "cuda" if str(values.get("trainer.accelerator")) in ("gpu", "cuda") and machine.cuda else "cpu"
    steps = cfg.recipe.get("probe_steps", 3)
    t0 = time.perf_counter()
    probe = probe_machine(
        module.model,
        probe_dm.train_dataset(),
        probe_dm.val_dataset(),
        batch_size=probe_dm.batch_size,
        steps=steps,
        bf16=machine.cpu_bf16 and device == "cpu",
        device=device,
        seed=int(cfg.get("seed") or 0),
        detections=max(1, round(stats.objects_per_image[1])),  # what a trained model finds, not the cap
    )
    log.info("probe: %.1f s", time.perf_counter() - t0)
    return probe


def choose_auto_recipe(cfg: DictConfig):
    """The recipe for ``cfg``'s train split on this machine (:func:`segbench.recipe.choose_recipe`), with the
    probe's timings unless ``recipe.probe=false``; the keys the user set (``recipe.overrides``, filled in by
    the command line) keep the user's values."""
    from segbench.recipe import (
        MIN_STEPS,
        choose_recipe,
        describe_machine,
        needs_lightening,
        train_statistics,
        with_probe,
    )

    overrides, _ = user_keys([str(o) for o in cfg.recipe.get("overrides") or []])
    dm = instantiate(cfg.data, num_workers=0, persistent_workers=False, _convert_="all")
    dm.setup("fit")
    stats = train_statistics(dm.train_coco, val_images=len(dm.val_coco))
    machine = describe_machine()
    current = _current(cfg)
    budget = cfg.get("budget")
    recipe = choose_recipe(stats, machine, budget_minutes=budget, overrides=overrides, current=current)
    skipped = _probe_skipped(cfg)
    probe = None if skipped else _probe(cfg, recipe.values(), dm, machine, stats)
    probed = with_probe(machine, probe, skipped)
    recipe = choose_recipe(stats, probed, budget_minutes=budget, overrides=overrides, current=current)
    history = []
    while not skipped and needs_lightening(recipe):
        # fewer than MIN_STEPS steps fit: a lighter recipe, timed again (its cost is only known by a timing)
        lighter = choose_recipe(
            stats,
            machine,
            budget_minutes=budget,
            overrides=overrides,
            current=current,
            lighten=recipe.lighten + 1,
        )
        if _cost_keys(lighter) == _cost_keys(recipe):
            break  # nothing left to lighten (the user's keys, or at the floors already)
        history.append(f"{recipe.steps:.0f} steps at {_cost_text(recipe)}")
        probe = _probe(cfg, lighter.values(), dm, machine, stats)
        probed = with_probe(machine, probe, None)
        recipe = choose_recipe(
            stats,
            probed,
            budget_minutes=budget,
            overrides=overrides,
            current=current,
            lighten=lighter.lighten,
        )
    if history:
        recipe.notes.append(
            f"lightened (fewer than {MIN_STEPS} steps fit the budget): "
            + "; ".join(history)
            + f"; now ~{recipe.steps:.0f} steps at {_cost_text(recipe)} (each level re-probed)"
        )
    return recipe


#: The keys a lightening level changes (segbench.recipe.lighter).
_COST_KEYS = ("model.net.box_batch_size_per_image", "data.max_crop")


def _cost_keys(recipe) -> tuple:
    return tuple(recipe.value(k) for k in _COST_KEYS)


def _cost_text(recipe) -> str:
    rois, crop = _cost_keys(recipe)
    return f"{rois} RoIs" + (f", {crop} px crops" if crop else "")


def _train_defaults() -> dict[str, str]:
    raw = OmegaConf.to_container(OmegaConf.load(Path(str(files("segbench.configs"))) / "train.yaml"))
    out = {}
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict):
            out.update({str(k): v for k, v in entry.items()})
    return out


def recipe_text(cfg: DictConfig, recipe, *, run_dir: Path, command_keys: tuple[str, ...] = ()) -> str:
    """``recipe.yaml``: the recipe as an experiment config that re-runs it (the rules switched off).
    ``command_keys``: top-level keys of the calling command (``segbench advise``'s fractions...), never written."""
    from segbench.recipe import experiment_yaml

    raw = [str(o) for o in cfg.recipe.get("overrides") or []]
    keys, groups = user_keys(raw)
    base = _train_defaults()
    defaults = []
    for group in dict.fromkeys([*_RECIPE_GROUPS, *groups]):
        if group in ("experiment", "debug", "hparams_search") or group.startswith("hydra"):
            continue
        option = groups.get(group, base.get(group))
        if option is None:
            continue
        shown = "[" + ", ".join(map(str, option)) + "]" if isinstance(option, list | tuple) else option
        defaults.append(f"override /{group}: {shown}")

    def own(key: str) -> bool:  # a key of the run, not of its recipe
        return key.split(".")[0] in (*_RUN_KEYS, *command_keys)

    from_groups = {k for k, src in keys.items() if src.split("=", 1)[0].lstrip("+") in groups}
    debug_keys = {k for k, src in keys.items() if src.split("=", 1)[0].lstrip("+") == "debug"}
    values: list = [
        ("name", cfg.get("name"), None),
        ("budget", cfg.get("budget"), "minutes of training the recipe was chosen for"),
        ("recipe.auto", False, "the rules are not applied again: this file is the recipe"),
        ("recipe.probe", bool(cfg.recipe.get("probe", True)), None),
        ("recipe.probe_steps", int(cfg.recipe.get("probe_steps", 3)), None),
        ("recipe.dry_run", False, None),
        ("recipe.overrides", [], None),
        ("recipe.chosen_in", str(run_dir), "the run that chose it"),
    ]
    chosen = {c.key for c in recipe.choices}
    for key in keys:
        if own(key) or key in chosen or (key in from_groups and key not in debug_keys):
            continue
        values.append((key, _plain(OmegaConf.select(cfg, key, default=None)), "your override"))
    for c in recipe.choices:
        comment = c.reason if c.override is None else f"your override ({c.override})"
        values.append((c.key, c.value, comment))
    header = [
        f"The recipe `segbench train experiment=auto` chose on {datetime.now():%Y-%m-%d %H:%M} for this run",
        f"({run_dir}). Run it again exactly, the rules not re-applied:",
        f"  segbench train experiment={run_dir / RECIPE_FILE}",
    ]
    return experiment_yaml(values, defaults=defaults, header=header)


def _apply_saved_recipe(cfg: DictConfig, path: Path, *, keep: set[str] = frozenset()) -> bool:
    """Apply the keys of a saved ``recipe.yaml`` (not ``name``, ``budget``, ``recipe``; not the keys in
    ``keep``, which the user set again); ``False`` when there is no such file."""
    if not path.is_file():
        return False
    raw = OmegaConf.to_container(OmegaConf.load(path))
    raw.pop("defaults", None)
    values = {k: v for k, v in _leaves(raw).items() if k.split(".")[0] not in _RUN_KEYS and k not in keep}
    _apply(cfg, values)
    with open_dict(cfg):
        cfg.recipe.auto = False
    return True


def _refuse_ddp_in_multirun(trainer) -> None:
    """Lightning starts DDP ranks by running the command line again, which in a multirun job would start
    the whole sweep again in every rank; only ranks started by the cluster (srun) work there."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if trainer.world_size <= 1 or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    env = getattr(trainer.strategy, "cluster_environment", None)
    if env is None or not env.creates_processes_externally:
        raise SegbenchError(
            f"a multirun job cannot start {trainer.world_size} DDP processes itself (each would run the whole "
            "sweep again); sweep with trainer.devices=1, or on SLURM with hydra/launcher=submitit_slurm and "
            "hydra.launcher.tasks_per_node=<devices> so that srun starts the ranks"
        )


def run(cfg: DictConfig) -> dict:
    """Train Mask R-CNN on ``data`` with ``model`` / ``trainer``; write the run folder; return its metrics.

    The run folder (``run_dir``) holds ``config.yaml`` (resolved), ``checkpoints/`` (best by
    ``val/segm_mAP`` and ``last.ckpt``), ``logs/metrics.csv`` and ``metrics.json``. Two runs never share
    one: a run whose folder another run already took (the same name started in the same second) writes
    to ``<run_dir>-2``.

    Keys: data (the dataset and its loader), model (network, optimizer, schedule), trainer, callbacks,
    logger, name, seed, run_dir, resume (continue the latest run of name, or run_dir when it holds
    checkpoints, from its newest readable checkpoint), ckpt_path (resume a given checkpoint),
    test_after_fit, budget and recipe (experiment=auto, the default: the recipe is chosen from the train
    split and this machine within budget minutes, printed with a reason per key and saved as recipe.yaml in the
    run folder; recipe.probe=false skips the timed probe, recipe.dry_run=true prints the recipe and stops;
    experiment=torchvision is torchvision's plain recipe). Presets: experiment=NAME (configs/experiment/), or
    experiment=FILE.yaml (e.g. a saved recipe.yaml). Sweeps: ``segbench train -m
    key=a,b ...`` (Hydra multirun; hparams_search=maskrcnn_optuna for Optuna) writes one run folder per
    job and sweep.csv. SIGTERM stops at the next batch with a checkpoint of that step (exit status 143).
    Multi-node: the same command on every node under torchrun or srun with trainer.num_nodes=N (trainer=slurm
    on SLURM, with auto-requeue); all ranks share one run folder, written by global rank 0, and a requeued
    SLURM job continues its own run (docs/guide.md, "Multi-node training").
    """
    from segbench.callbacks import publish_run
    from segbench.models.checkpoint import read_checkpoint
    from segbench.training import (
        LAUNCH_FILE,
        RUN_DIR_ENV,
        claim_run_dir,
        fit,
        is_global_zero,
        latest_run,
        launcher,
        requeued_run,
        resume_checkpoint,
        run_checkpoints,
    )

    started = time.perf_counter()
    ckpt_path = cfg.get("ckpt_path")
    run_dir = Path(cfg.run_dir)
    recipe = None
    chatty = is_global_zero()
    requeued = None if cfg.get("resume") or ckpt_path else requeued_run(cfg.paths.output_dir, cfg.name)
    if requeued is not None:
        log.info("SLURM requeued job %s: continuing its run %s", os.environ.get("SLURM_JOB_ID"), requeued)
    if (cfg.get("resume") or requeued is not None) and not ckpt_path:
        prev = requeued or (
            run_dir if run_checkpoints(run_dir) else latest_run(cfg.paths.output_dir, cfg.name)
        )
        if prev is None:
            raise SegbenchError(
                f"resume=true but no earlier run of '{cfg.name}' with a checkpoint under "
                f"{Path(cfg.paths.output_dir) / 'train' / cfg.name}; start a new run or pass ckpt_path=FILE"
            )
        if _auto(cfg):  # the run continues with the recipe it was started with, not a new choice
            again, _ = user_keys([str(o) for o in cfg.recipe.get("overrides") or []])
            if _apply_saved_recipe(cfg, prev / RECIPE_FILE, keep=set(again)):
                if chatty:
                    print(f"recipe: the one saved in {prev / RECIPE_FILE} (resume)")
            else:
                log.warning("%s has no %s: choosing the recipe again", prev, RECIPE_FILE)
                recipe = choose_auto_recipe(cfg)
                _apply(cfg, recipe.values())
                if chatty:
                    print(recipe.text())
        if prev != run_dir:
            _rebase(cfg, str(cfg.run_dir), str(prev))
            cfg.run_dir = str(prev)
        run_dir = prev
        ckpt, skipped = resume_checkpoint(prev)  # the newest readable one: a damaged last.ckpt is skipped
        if skipped:
            print(
                f"resuming from {ckpt}: skipped unreadable "
                + ", ".join(p.name for p, _ in skipped)
                + " (reasons in the log above)"
            )
        ckpt_path = str(ckpt)
        owner = is_global_zero()  # RANK / SLURM_PROCID: each node of a multi-node run has a LOCAL_RANK 0
        log.info("resuming %s from %s", prev, ckpt_path)
    else:
        if ckpt_path:  # refuses missing, unsafe or foreign files before any work
            read_checkpoint(ckpt_path, key="ckpt_path")
        inherited = os.environ.get(RUN_DIR_ENV) if "LOCAL_RANK" in os.environ and launcher() is None else None
        if _auto(cfg) and inherited and _apply_saved_recipe(cfg, Path(inherited) / RECIPE_FILE):
            pass  # a DDP rank that Lightning started: the recipe its launching process chose and saved
        elif isinstance(cfg.get("recipe"), DictConfig) and not _auto(cfg) and cfg.recipe.get("dry_run"):
            if chatty:
                print(
                    "recipe.auto=false: the config as composed (`segbench train --cfg` prints it); nothing trained"
                )
            return {"dry_run": True}
        elif _auto(cfg):
            recipe = choose_auto_recipe(cfg)
            _apply(cfg, recipe.values())
            if chatty:
                print(recipe.text())
            if cfg.recipe.get("dry_run"):
                if chatty:
                    print("recipe.dry_run=true: nothing trained (drop it to train with this recipe)")
                return {"dry_run": True, "recipe": recipe.values()}
        run_dir, owner = claim_run_dir(run_dir)
        if str(run_dir) != str(cfg.run_dir):
            _rebase(cfg, str(cfg.run_dir), str(run_dir))
            cfg.run_dir = str(run_dir)
    if owner:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        if recipe is not None:
            atomic_write_text(run_dir / RECIPE_FILE, recipe_text(cfg, recipe, run_dir=run_dir))
            if chatty:
                print(
                    f"recipe saved: {run_dir / RECIPE_FILE} (segbench train experiment=<that file> runs it again)"
                )
        if (launcher() is not None or "SLURM_JOB_ID" in os.environ) and requeued is None:
            write_json(run_dir / LAUNCH_FILE, _launch_record())  # a requeued SLURM job finds its run by it
    if cfg.get("seed") is not None:
        import pytorch_lightning as pl

        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    dm, module, trainer = build_run(cfg, run_dir)
    _refuse_ddp_in_multirun(trainer)
    result = fit(
        datamodule=dm,
        module=module,
        trainer=trainer,
        run_dir=run_dir,
        ckpt_path=ckpt_path,
        evaluate_best=bool(cfg.get("test_after_fit")),
        eval_max_dets=cfg.model.get("eval_max_dets"),
        eval_score_threshold=cfg.model.get("eval_score_threshold", 0.5),
        started=started,
    )
    publish_run(trainer, result)  # logger=mlflow / wandb: the final report and best checkpoint (TrackRun)
    if trainer.is_global_zero:
        print(f"run folder: {run_dir}")
        if result.get("val"):
            print(format_metrics_table(result["val"]))
    return result
