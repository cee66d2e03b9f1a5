"""The package's rooms import one way only (../shared/GUIDE.md): a test walks every import, including
the ones inside functions, and fails on an import against the order."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import segbench

SRC = Path(segbench.__file__).resolve().parent

#: The floors, lowest first. A module may import its own room and any room on a lower floor, never a
#: room on its own floor or above. ``io`` sits above ``types`` because it raises ``SegbenchError``;
#: ``callbacks`` (Lightning plugins and callbacks) below ``training``, which writes checkpoints with them;
#: ``predict`` above ``export`` and ``report`` because it runs exported models and draws overlays;
#: ``distributed`` (predict and eval over DDP processes) just above ``predict`` and ``training``, which it runs;
#: ``tiling`` (any segmenter by tiles: numpy and pycocotools) beside the baselines, which it wraps;
#: ``recipe`` (experiment=auto: statistics, the probe, the rules) beside ``training``, on the models and data.
FLOORS: list[set[str]] = [
    {"types", "options"},
    {"io"},
    {"data", "baselines", "tiling"},
    {"eval"},
    {"models"},
    {"callbacks"},
    {"training", "recipe"},
    {"report", "export", "advise"},
    {"predict"},
    {"distributed"},
    {"commands"},
    {"cli"},
]
FLOOR = {room: k for k, rooms in enumerate(FLOORS) for room in rooms}
#: Third-party packages only some rooms may use: Hydra is met in the CLI and the command layer (which
#: instantiates the objects that the configs name); torch never in the classical baselines.
ONLY_IN = {"hydra": {"cli", "commands"}, "omegaconf": {"cli", "commands"}}
NEVER_IN = {"baselines": {"torch", "torchvision", "pytorch_lightning", "segbench.eval"}}


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def modules() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(SRC.rglob("*.py")):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, p))
    return out


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in the file, top-level or inside a function: ``(line, module)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; write it absolute")
            found.append((node.lineno, node.module or ""))
    return found


def test_every_room_has_a_floor():
    rooms = {room_of(m) for m, _ in modules() if m != "segbench"}
    assert rooms - {"configs"} <= set(FLOOR), f"rooms without a floor: {sorted(rooms - set(FLOOR))}"
    assert len(rooms) >= 12  # the walk found the package


def test_imports_point_down():
    wrong = []
    for name, path in modules():
        if name == "segbench":
            continue
        src = room_of(name)
        for line, mod in imports_of(path):
            if not mod.startswith("segbench.") or src == "configs":
                continue
            dst = room_of(mod)
            if dst != src and FLOOR[dst] >= FLOOR[src]:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line} ({src}) imports {mod} ({dst})")
    assert not wrong, "imports against the order of the floors:\n" + "\n".join(wrong)


def test_third_party_rules():
    wrong = []
    for name, path in modules():
        src = room_of(name)
        for line, mod in imports_of(path):
            top = mod.split(".")[0]
            if top in ONLY_IN and src not in ONLY_IN[top]:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {mod} outside {sorted(ONLY_IN[top])}")
            banned = NEVER_IN.get(src, set())
            if top in banned or any(mod == b or mod.startswith(b + ".") for b in banned):
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {mod} in {src}")
    assert not wrong, "\n".join(wrong)


def test_nothing_but_the_cli_names_a_command_module():
    """Library code never reaches the command layer, not even through a string target."""
    wrong = []
    for name, path in modules():
        if room_of(name) in ("commands", "cli"):
            continue
        if "segbench.commands" in path.read_text(encoding="utf-8"):
            wrong.append(str(path.relative_to(SRC.parent)))
    assert not wrong, f"library modules that name segbench.commands: {wrong}"


def test_each_command_runs_a_function_of_its_own_module():
    from segbench.cli import COMMANDS

    for cmd in COMMANDS.values():
        module, _, func = cmd.target.partition(":")
        assert module.startswith("segbench.commands."), cmd
        assert cmd.name.split()[0] == module.rsplit(".", 1)[1], f"{cmd.name} is served by {module}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from segbench.eval.metrics import x\n", "imports segbench.eval.metrics (eval)"),
        ("def f():\n    import segbench.report\n", "imports segbench.report (report)"),
    ],
)
def test_the_walk_catches_an_upward_import(tmp_path, monkeypatch, source, expected):
    """The check itself can fail: an upward import in a fake baselines module is reported."""
    fake = tmp_path / "segbench"
    (fake / "baselines").mkdir(parents=True)
    (fake / "baselines" / "bad.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    with pytest.raises(AssertionError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        test_imports_point_down()
