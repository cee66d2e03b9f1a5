"""``segbench <command> [key=value ...]``: thin entry points over Hydra configs.

Each command composes ``configs/<command>.yaml`` with the user's overrides (Hydra syntax), checks that
no required value is missing, and calls one plain function with the config. Errors about the user's
data, files or config are printed as one short message — never as a traceback (set ``SEGBENCH_DEBUG=1``
to see it anyway).

``segbench train -m key=a,b ...`` (``--multirun``; implied by ``hparams_search=NAME``) is a sweep: the command
runs through Hydra's own ``hydra.main`` in multirun mode, so that Hydra's sweepers and launchers
(``hydra/sweeper=optuna``, ``hydra/launcher=submitit_local``, ``submitit_slurm``) work. Each job trains in its
own folder ``<sweep folder>/<job number>`` and returns ``optimized_metric`` to the sweeper; the sweep folder's
``sweep.csv`` has one row per job. A single run never goes through ``hydra.main`` (no Hydra output folders,
no Hydra logging).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger("segbench")


@dataclass(frozen=True)
class Command:
    name: str  # as typed: "train", "data stats"
    config: str  # config file name under configs/
    target: str  # "module:function" taking the composed DictConfig
    help: str


# fmt: off
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("train", "train", "segbench.commands.train:run", "fine-tune Mask R-CNN on a COCO dataset (experiment=...)"),
        Command("advise", "advise", "segbench.commands.advise:run", "how many labels you need: train on nested subsets, fit a learning curve, predict the mAP at 2x the labels"),
        Command("eval", "eval", "segbench.commands.eval:run", "score a checkpoint on a split: metrics.json + COCO results"),
        Command("compare", "compare", "segbench.commands.compare:run", "score the model and the classical baselines on one split: leaderboard, plots, HTML report"),
        Command("predict", "predict", "segbench.commands.predict:run", "predict images (file, folder, glob) with a checkpoint, an export or a baseline: COCO results + overlays"),
        Command("export", "export", "segbench.commands.export:run", "export a checkpoint to state_dict / TorchScript / ONNX, each checked against PyTorch"),
        Command("score", "score", "segbench.commands.score:run", "score any COCO results JSON against a COCO ground truth"),
        Command("data synth", "data_synth", "segbench.commands.data:synth", "write the embedded synthetic COCO dataset"),
        Command("data stats", "data_stats", "segbench.commands.data:stats", "print per-split statistics of a dataset"),
        Command("data check", "data_check", "segbench.commands.data:check", "check a dataset: every problem with ids and a fix hint (fix=true writes a corrected JSON)"),
        Command("data import", "data_import", "segbench.commands.data:import_", "convert a VIA, LabelMe, YOLO-seg, CVAT XML or instance-mask export into a COCO dataset (+ import_log.txt)"),
        Command("data export", "data_export", "segbench.commands.data:export", "export a COCO dataset as Ultralytics YOLO-seg (images/, labels/, data.yaml) or instance masks"),
    ]
}
# fmt: on


class UsageError(Exception):
    pass


#: Where Hydra finds segbench's own configs: the ``segbench.configs`` package (inside the wheel).
CONFIG_MODULE = "segbench.configs"


def config_dir() -> Path:
    """The folder of segbench's shipped configs (``segbench/configs`` inside the installed package)."""
    from importlib.resources import files

    return Path(str(files(CONFIG_MODULE)))


def _now(fmt: str) -> str:
    """``${now:FMT}``: the command's start time. main() sets ``SEGBENCH_START_TIME`` once per command in the
    launching process; DDP re-runs the command line in each rank, which inherits it, and the ranks that
    torchrun or srun start on several nodes get one shared through the launcher (:func:`_set_start_time`),
    so that all ranks agree on the run folder."""
    start = os.environ.get("SEGBENCH_START_TIME")
    return (datetime.fromisoformat(start) if start else datetime.now()).strftime(fmt)


def _launched_as_rank(env) -> bool:
    """Whether a launcher started this process as one rank of a distributed run: Lightning's DDP
    (``LOCAL_RANK``), torchrun (``TORCHELASTIC_RUN_ID``) or srun with more than one task."""
    if "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env:
        return True
    return "SLURM_PROCID" in env and (env.get("SLURM_NTASKS") or "1") != "1"


def _set_start_time(env) -> None:
    """``SEGBENCH_START_TIME`` for ``${now:}``: this command's clock, except in a rank of a distributed run,
    where all ranks on all nodes must agree: the time inherited from the launching process, else the one
    shared through the launcher (:func:`segbench.training.shared_start_time`)."""
    if not _launched_as_rank(env):
        env["SEGBENCH_START_TIME"] = datetime.now().isoformat(timespec="microseconds")
    elif not env.get("SEGBENCH_START_TIME"):
        from segbench.training import shared_start_time  # imports Lightning: only in a rank of a launcher

        env["SEGBENCH_START_TIME"] = shared_start_time(env)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    # replace=True: Hydra's initialisation installs its own per-process ``now``.
    OmegaConf.register_new_resolver("now", _now, replace=True)
    OmegaConf.register_new_resolver("cpu_precision", _cpu_precision, replace=True)


def _cpu_precision() -> str:
    from segbench.training import cpu_precision

    return cpu_precision()


def compose(config_name: str, overrides: list[str]):
    """Compose ``configs/<config_name>.yaml`` with overrides; raise UsageError with a readable message.

    ``experiment=FILE.yaml`` selects an experiment config by its path (:func:`experiment_files`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with (
            experiment_files(overrides) as resolved,
            initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"),
        ):
            _register_resolvers()
            cfg = hydra_compose(config_name=config_name, overrides=resolved)
    except (HydraException, OmegaConfBaseException) as e:
        raise _override_error(e) from None
    _check_missing(cfg)
    return cfg


#: The config groups whose option may be given as the path of a YAML file.
FILE_GROUPS = ("experiment",)


def _file_option(value: str) -> Path | None:
    """The file an option names (``experiment=outputs/train/auto/T/recipe.yaml``), ``None`` for a name."""
    if value.endswith((".yaml", ".yml")):
        path = Path(value).expanduser()
        if not path.is_file():
            raise UsageError(f"experiment={value}: no such file")
        return path
    return None


@contextmanager
def experiment_files(overrides: list[str]):
    """The overrides with ``experiment=FILE.yaml`` turned into a selection Hydra can make: the file is copied
    into ``<temporary folder>/experiment/`` and that folder joins the search path (after segbench's own and
    any ``--config-dir``) for as long as the context lasts. A saved ``recipe.yaml`` runs again this way."""
    found = []
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key.lstrip("+") in FILE_GROUPS and (path := _file_option(value.strip("'\""))) is not None:
            found.append((key, path))
            continue
        out.append(o)
    if not found:
        yield list(overrides)
        return
    shipped = {p.stem for p in (config_dir() / "experiment").glob("*.y*ml")}
    with tempfile.TemporaryDirectory(prefix="segbench-configs-") as tmp:
        for key, path in found:
            group = key.lstrip("+")
            name = path.stem if path.stem not in shipped else f"{path.stem}_file"
            (Path(tmp) / group).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(tmp) / group / f"{name}.yaml")
            out.append(f"{key}={name}")
        entry = f"file://{Path(tmp).resolve()}"
        for k, o in enumerate(out):
            if o.startswith("hydra.searchpath=[") and o.endswith("]"):
                inner = o[len("hydra.searchpath=[") : -1].strip()
                out[k] = "hydra.searchpath=[" + (f"{inner},{entry}" if inner else entry) + "]"
                break
        else:
            out.append(f"hydra.searchpath=[{entry}]")
        yield out


def _record_overrides(cfg, overrides: list[str]) -> None:
    """Note the user's command-line overrides in ``recipe.overrides`` (where the config has a ``recipe``, i.e.
    experiment=auto): the keys the user set keep the user's values there."""
    from omegaconf import DictConfig, open_dict

    if isinstance(cfg.get("recipe"), DictConfig):
        kept = [o for o in overrides if not o.startswith("hydra.") or o.startswith("hydra.searchpath=")]
        with open_dict(cfg.recipe):
            cfg.recipe.overrides = kept  # the search path: where the options of the user's own groups are


def _override_error(e: Exception) -> UsageError:
    """A Hydra or OmegaConf composition error as a one-line usage error with a hint."""
    msg = str(e).strip().splitlines()
    text = " ".join(x.strip() for x in msg if x.strip()).split(" Config search path")[0]
    hint = ""
    if "hydra/sweeper" in text or "hydra/launcher" in text:
        hint = (
            " (Hydra's sweeper and launcher plugins are an extra: pip install 'segbench[sweep]' for "
            "hydra/sweeper=optuna, hydra/launcher=submitit_local and submitit_slurm)"
        )
    elif "not in struct" in text or "Could not override" in text or "Key '" in text:
        hint = " (check the key's spelling; `segbench <command> --cfg` prints every key; add a new key with +key=value)"
    elif "parse" in text.lower() or "mismatched input" in text or "no viable alternative" in text:
        hint = " (overrides look like key=value, e.g. data.root=data/synth trainer.max_epochs=3)"
    return UsageError(f"bad override: {text}{hint}")


def _check_missing(cfg) -> None:
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(
            "missing required value(s): "
            + ", ".join(missing)
            + ". Pass them on the command line, e.g. "
            + " ".join(f"{k}=..." for k in missing)
        )


def _resolve(cfg) -> None:
    """Resolve every interpolation now, so that a broken one is reported as a config error."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise UsageError(f"config error: {e}".splitlines()[0]) from None


def usage() -> str:
    width = max(len(n) for n in COMMANDS) + 2
    lines = [
        "usage: segbench <command> [key=value ...] [--cfg] [--help]   |   segbench train -m key=a,b ...",
        "",
        "Instance segmentation for your own COCO-labelled images.",
        "",
        "commands:",
    ]
    lines += [f"  {n:<{width}}{c.help}" for n, c in COMMANDS.items()]
    lines += [
        "",
        "Options are Hydra overrides (key=value, group=option, +new_key=value); `segbench <command> --cfg`",
        "prints the composed configuration, `segbench <command> --help` its description. `segbench train -m`",
        "(--multirun) sweeps: one run per combination (key=a,b), or an Optuna search (hparams_search=NAME).",
    ]
    return "\n".join(lines)


def _split_command(argv: list[str]) -> tuple[Command, list[str]]:
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise SystemExit(print(usage()) or 0)
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS and all("=" not in a for a in argv[:words]):
            return COMMANDS[name], argv[words:]
    first = argv[0]
    groups = sorted({n.split()[0] for n in COMMANDS if " " in n})
    if first in groups:
        subs = [n for n in COMMANDS if n.startswith(first + " ")]
        raise UsageError(f"'{first}' needs a subcommand: " + ", ".join(subs))
    raise UsageError(f"unknown command '{first}'. Commands: " + ", ".join(COMMANDS) + " (segbench --help)")


def _config_dir_overrides(args: list[str]) -> list[str]:
    """``--config-dir DIR`` (or ``--config-dir=DIR``, repeatable): add a folder of the user's own configs
    (e.g. ``DIR/experiment/mine.yaml``) to Hydra's search path, after segbench's own. The same as the
    override ``hydra.searchpath=[file://DIR]``."""
    dirs, out, k = [], [], 0
    while k < len(args):
        a = args[k]
        if a == "--config-dir":
            if k + 1 >= len(args) or "=" in args[k + 1] or args[k + 1].startswith("--"):
                raise UsageError("--config-dir needs a folder: --config-dir DIR")
            dirs.append(args[k + 1])
            k += 2
            continue
        if a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1])
        else:
            out.append(a)
        k += 1
    for d in dirs:
        if not Path(d).is_dir():
            raise UsageError(f"--config-dir {d}: no such folder")
    if dirs:
        out.append("hydra.searchpath=[" + ",".join(f"file://{Path(d).resolve()}" for d in dirs) + "]")
    return out


def _load(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def setup_logging() -> None:
    level = os.environ.get("SEGBENCH_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_noisy_loggers()


def _user_message(e: BaseException) -> str:
    """The message of ``e``; for an error re-raised by a DataLoader worker (whose message holds the
    worker's traceback), only the original message."""
    text = str(e)
    if text.startswith("Caught ") and "Original Traceback" in text:
        lines = text.rstrip().splitlines()
        prefixes = (f"{type(e).__module__}.{type(e).__qualname__}: ", f"{type(e).__qualname__}: ")
        for k in range(len(lines) - 1, -1, -1):
            for prefix in prefixes:
                if lines[k].startswith(prefix):
                    return "\n".join([lines[k][len(prefix) :], *lines[k + 1 :]]).strip()
    return text


def _error_reply(e: Exception) -> tuple[int, str]:
    """The exit status and the message (one line, or two for a bug) for an exception that reached the
    command line: 2 for the user's config, data or files (a :class:`~segbench.types.SegbenchError` may name
    another status as ``exit_code``), 3 for a bug."""
    from hydra.errors import InstantiationException

    from segbench.types import SegbenchError

    if isinstance(e, UsageError):
        return 2, f"segbench: error: {e}"
    if isinstance(e, SegbenchError):
        return int(getattr(e, "exit_code", 2)), f"segbench: error: {_user_message(e)}"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        from segbench.callbacks import write_error_message

        where = write_error_message(e.filename, e) if e.filename else f"cannot write: {e.strerror}"
        return 2, f"segbench: error: {where}"
    if isinstance(e, InstantiationException):
        cause = e.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, SegbenchError):  # raised by the class Hydra built: the user's mistake
            return 2, f"segbench: error: {_user_message(cause)}"
        lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
        return 2, f"segbench: config error: {' '.join(lines)}"
    return 3, (
        f"segbench: internal error: {type(e).__name__}: {e}\n"
        "This is a bug in segbench; rerun with SEGBENCH_DEBUG=1 for the traceback and report it."
    )


#: The commands that sweep (``-m``): their function returns a result dict with ``optimized_metric``.
MULTIRUN_COMMANDS = ("train",)


class SweepJobFailed(Exception):
    """A job of a multirun failed; its one-line message was printed and its row of sweep.csv says so."""

    def __init__(self, job: int, message: str, code: int) -> None:
        super().__init__(job, message, code)  # the arguments, so that it pickles (submitit launchers)
        self.job, self.message, self.code = job, message, code

    def __str__(self) -> str:
        return f"job {self.job} failed: {self.message}"


def _wants_multirun(overrides: list[str]) -> bool:
    """``hparams_search=NAME`` is a search: it runs as a multirun without ``-m`` (as ``hydra.mode:
    MULTIRUN`` in lightning-hydra-template's hparams_search configs)."""
    return any(re.fullmatch(r"\+{0,2}hparams_search=(?!null$)\S+", o) for o in overrides)


def _quote(value: str) -> str:
    """A Hydra override value that is taken literally (a path with spaces, = or ,)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _claim_sweep_dir(cmd: Command, overrides: list[str]) -> tuple[Path, bool]:
    """The sweep folder, and whether segbench chose it: ``hydra.sweep.dir`` of the config composed with the
    overrides that are not sweeps, made new for this sweep (``<dir>-2`` when another sweep started in the
    same second took it), unless the user named it with ``hydra.sweep.dir=``. Composing also reports a bad
    fixed override before any job starts."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from segbench.training import claim_folder

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        with (
            experiment_files(fixed) as resolved,
            initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"),
        ):
            _register_resolvers()
            cfg = hydra_compose(config_name=cmd.config, overrides=resolved, return_hydra_config=True)
        path = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))).absolute()
    except (HydraException, OmegaConfBaseException) as e:
        raise _override_error(e) from None
    if any(o.key_or_group == "hydra.sweep.dir" for o in parsed):
        path.mkdir(parents=True, exist_ok=True)
        return path, False
    return claim_folder(path, marker="sweep.csv"), True


def _sweep_job(fn: Callable, cfg, *, debug: bool):
    """One job of a multirun (called by Hydra's launcher, in this process or a launcher's worker): the
    command on the job's config with ``run_dir`` = the job's output folder; its row of sweep.csv; the
    metric for the sweeper."""
    from hydra.core.hydra_config import HydraConfig

    from segbench.training import PREEMPTED_EXIT_CODE, run_checkpoints, write_sweep_row, write_sweep_summary

    hc = HydraConfig.get()
    job_dir, sweep_dir = Path(hc.runtime.output_dir), Path(hc.sweep.dir)
    num = int(hc.job.num)
    overrides = " ".join(hc.overrides.task)
    row: dict = {"job": num, "overrides": overrides, "run_dir": str(job_dir), "status": "running"}
    write_sweep_row(job_dir, row)
    write_sweep_summary(sweep_dir)
    started = time.perf_counter()
    try:
        _register_resolvers()  # a launcher's worker process has not registered them
        _check_missing(cfg)
        _record_overrides(cfg, list(hc.overrides.task))
        if "run_dir" in cfg:
            cfg.run_dir = str(job_dir)
            if cfg.get("resume") and not cfg.get("ckpt_path") and not run_checkpoints(job_dir):
                log.info("job %d: nothing to resume in %s yet; starting it", num, job_dir)
                cfg.resume = False  # a requeued job continues its own folder; a new one starts there
        _resolve(cfg)
        _quiet_noisy_loggers()
        result = fn(cfg)
        metric_key = str(cfg.get("optimized_metric") or "best_val_segm_mAP")
        found, metric = _lookup(result, metric_key)
        if not found:
            raise UsageError(
                f"optimized_metric={metric_key} is not in the run's result (keys: "
                + ", ".join(sorted(result) if isinstance(result, dict) else [])
                + "); nested keys are written with dots, e.g. val.segm_AP"
            )
    except KeyboardInterrupt:
        row.update(status="interrupted", wall_s=round(time.perf_counter() - started, 2))
        write_sweep_row(job_dir, row)
        write_sweep_summary(sweep_dir)
        raise
    except Exception as e:
        code, msg = _error_reply(e)
        row.update(
            status="preempted" if code == PREEMPTED_EXIT_CODE else "failed",
            error=msg.removeprefix("segbench: ").splitlines()[0],
            wall_s=round(time.perf_counter() - started, 2),
        )
        write_sweep_row(job_dir, row)
        write_sweep_summary(sweep_dir)
        if debug:
            raise
        print(f"segbench: job {num} ({overrides}): {msg.removeprefix('segbench: ')}", file=sys.stderr)
        if code == PREEMPTED_EXIT_CODE:  # the whole sweep was asked to stop: stop the next jobs too
            raise SystemExit(code) from None
        raise SweepJobFailed(num, row["error"], code) from None
    row.update(
        status="ok",
        best_val_segm_mAP=result.get("best_val_segm_mAP") if isinstance(result, dict) else None,
        wall_s=round(time.perf_counter() - started, 2),
        run_dir=str(result.get("run_dir", job_dir)) if isinstance(result, dict) else str(job_dir),
    )
    write_sweep_row(job_dir, row)
    write_sweep_summary(sweep_dir)
    return None if metric is None else float(metric)


def _lookup(result, key: str) -> tuple[bool, object]:
    """``result[a][b]`` for ``key="a.b"`` (or ``result["a.b"]``): (found, value)."""
    if isinstance(result, dict) and key in result:
        return True, result[key]
    node = result
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _multirun(cmd: Command, overrides: list[str], *, debug: bool) -> int:
    """Run ``cmd`` as a Hydra multirun through ``hydra.main``; write and print the sweep summary."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    from segbench.training import write_sweep_summary

    if cmd.name not in MULTIRUN_COMMANDS:
        raise UsageError(f"-m/--multirun sweeps {', '.join(MULTIRUN_COMMANDS)} only, not '{cmd.name}'")
    sweep_dir, chosen = _claim_sweep_dir(cmd, overrides)
    fn = _load(cmd.target)

    def task(cfg):
        return _sweep_job(fn, cfg, debug=debug)

    files = ExitStack()  # experiment=FILE: its temporary config folder lives until the sweep ends
    overrides = files.enter_context(experiment_files(overrides))
    argv = [sys.argv[0] if sys.argv else "segbench", *overrides]
    if chosen:
        argv.append(f"hydra.sweep.dir={_quote(str(sweep_dir))}")
    argv.append("--multirun")
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    failed: SweepJobFailed | None = None
    try:
        sys.argv = argv
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing a traceback; main() reports
        hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=cmd.config)(task)()
    except SweepJobFailed as e:
        failed = e
    except InstantiationException:
        raise
    except (HydraException, OmegaConfBaseException) as e:
        raise _override_error(e) from None
    finally:
        files.close()
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
        for h in root.handlers:  # Hydra's job logging: back to the caller's (an in-process caller, tests)
            if h not in saved_handlers:
                h.close()
        root.handlers[:], root.level = saved_handlers, saved_level
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        table, rows = write_sweep_summary(sweep_dir)
        if not rows and chosen and {p.name for p in sweep_dir.iterdir()} <= {"sweep.csv", "multirun.yaml"}:
            shutil.rmtree(sweep_dir, ignore_errors=True)  # no job started (a bad override): leave no trace
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "failed")}
    print(f"sweep: {len(rows)} job(s), {counts['ok']} ok, {counts['failed']} failed; summary: {table}")
    done = [r for r in rows if r.get("status") == "ok" and r.get("best_val_segm_mAP") is not None]
    if done:
        best = max(done, key=lambda r: r["best_val_segm_mAP"])
        print(f"best val segm mAP {best['best_val_segm_mAP']:.4f}: job {best['job']} ({best['overrides']})")
    if failed is not None:
        print(
            f"segbench: error: the sweep stopped: job {failed.job} failed ({failed.message}); "
            f"{counts['failed']} of {len(rows)} job(s) failed, see {table}",
            file=sys.stderr,
        )
        return failed.code
    return 0


def _quiet_noisy_loggers() -> None:
    for noisy in ("matplotlib", "PIL", "fsspec", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns the exit status (0 ok, 1 the command found errors, 2 usage/data error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    debug = os.environ.get("SEGBENCH_DEBUG", "") not in ("", "0")

    try:
        _set_start_time(os.environ)
        cmd, rest = _split_command(argv)
        rest = _config_dir_overrides(rest)
        multirun = "-m" in rest or "--multirun" in rest
        rest = [a for a in rest if a not in ("-m", "--multirun")]
        flags = {a for a in rest if a.startswith("--")}
        overrides = [a for a in rest if not a.startswith("--")]
        unknown_flags = flags - {"--cfg", "--help", "-h"}
        if unknown_flags:
            raise UsageError(f"unknown option(s) {sorted(unknown_flags)}; options are key=value overrides")
        if "--help" in flags or "-h" in rest:
            fn = _load(cmd.target)
            print(f"segbench {cmd.name}: {cmd.help}\n\n{(fn.__doc__ or '').strip()}\n")
            print(
                f"config: {config_dir() / (cmd.config + '.yaml')} (see all keys with `segbench {cmd.name} --cfg`)"
            )
            return 0
        if cmd.name == "predict":  # `model=FILE` names an export here, not the training config group
            overrides = ["exported=" + a[len("model=") :] if a.startswith("model=") else a for a in overrides]
        if (multirun or _wants_multirun(overrides)) and "--cfg" not in flags:
            return _multirun(cmd, overrides, debug=debug)
        if multirun:
            raise UsageError(
                "--cfg prints one configuration: drop -m (sweep values like key=a,b are not composed)"
            )
        cfg = compose(cmd.config, overrides)
        _record_overrides(cfg, overrides)
        if "--cfg" in flags:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        _resolve(cfg)
        setup_logging()
        fn = _load(cmd.target)
        status = fn(cfg)
        return status if isinstance(status, int) else 0
    except SystemExit as e:
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("segbench: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: no bare traceback for users
        if debug and not isinstance(e, UsageError):
            raise
        code, message = _error_reply(e)
        print(message, file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
