"""``segbench <command> [key=value ...]``: thin entry points over Hydra configs.

Each command composes ``configs/<command>.yaml`` with the user's overrides (Hydra syntax), checks that
no required value is missing, and calls one plain function with the config. Errors about the user's
data, files or config are printed as one short message — never as a traceback (set ``SEGBENCH_DEBUG=1``
to see it anyway).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
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
    launching process; DDP re-runs the command line in each rank, which inherits it, so that all ranks
    agree on the run folder."""
    start = os.environ.get("SEGBENCH_START_TIME")
    return (datetime.fromisoformat(start) if start else datetime.now()).strftime(fmt)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    # replace=True: Hydra's initialisation installs its own per-process ``now``.
    OmegaConf.register_new_resolver("now", _now, replace=True)
    OmegaConf.register_new_resolver("cpu_precision", _cpu_precision, replace=True)


def _cpu_precision() -> str:
    from segbench.training import cpu_precision

    return cpu_precision()


def compose(config_name: str, overrides: list[str]):
    """Compose ``configs/<config_name>.yaml`` with overrides; raise UsageError with a readable message."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            _register_resolvers()
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        msg = str(e).strip().splitlines()
        text = " ".join(x.strip() for x in msg if x.strip()).split(" Config search path")[0]
        hint = ""
        if "not in struct" in text or "Could not override" in text or "Key '" in text:
            hint = " (check the key's spelling; `segbench <command> --cfg` prints every key; add a new key with +key=value)"
        elif "parse" in text.lower() or "mismatched input" in text or "no viable alternative" in text:
            hint = " (overrides look like key=value, e.g. data.root=data/synth trainer.max_epochs=3)"
        raise UsageError(f"bad override: {text}{hint}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(
            "missing required value(s): "
            + ", ".join(missing)
            + ". Pass them on the command line, e.g. "
            + " ".join(f"{k}=..." for k in missing)
        )
    return cfg


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
        "usage: segbench <command> [key=value ...] [--cfg] [--help]",
        "",
        "Instance segmentation for your own COCO-labelled images.",
        "",
        "commands:",
    ]
    lines += [f"  {n:<{width}}{c.help}" for n, c in COMMANDS.items()]
    lines += [
        "",
        "Options are Hydra overrides (key=value, group=option, +new_key=value); `segbench <command> --cfg`",
        "prints the composed configuration, `segbench <command> --help` its description.",
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
    for noisy in ("matplotlib", "PIL", "fsspec", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns the exit status (0 ok, 1 the command found errors, 2 usage/data error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if "LOCAL_RANK" not in os.environ:  # a DDP child keeps its launcher's start time
        os.environ["SEGBENCH_START_TIME"] = datetime.now().isoformat(timespec="microseconds")
    debug = os.environ.get("SEGBENCH_DEBUG", "") not in ("", "0")
    from segbench.types import SegbenchError

    try:
        cmd, rest = _split_command(argv)
        rest = _config_dir_overrides(rest)
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
        cfg = compose(cmd.config, overrides)
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
    except UsageError as e:
        print(f"segbench: error: {e}", file=sys.stderr)
        return 2
    except SegbenchError as e:
        if debug:
            raise
        print(f"segbench: error: {_user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segbench: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: no bare traceback for users
        if debug:
            raise
        from hydra.errors import InstantiationException

        if isinstance(e, InstantiationException):
            cause = e.__cause__
            while isinstance(cause, InstantiationException):
                cause = cause.__cause__
            if isinstance(cause, SegbenchError):  # raised by the class Hydra built: the user's mistake
                print(f"segbench: error: {_user_message(cause)}", file=sys.stderr)
                return 2
            lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
            print(f"segbench: config error: {' '.join(lines)}", file=sys.stderr)
            return 2
        print(
            f"segbench: internal error: {type(e).__name__}: {e}\n"
            "This is a bug in segbench; rerun with SEGBENCH_DEBUG=1 for the traceback and report it.",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
