"""Every ``segbench ...`` command line in the README and docs/guide.md composes its config.

The lines are taken from the ```bash blocks (lines starting with ``segbench `` or ``.venv/bin/segbench ``)
and from the first column of the command tables, and each is run as ``segbench.cli.main([..., "--cfg"])``:
the same parsing, ``--config-dir`` handling and ``predict model=`` rewrite as a real call, which then only
composes and prints the config. Placeholders (``DIR``, ``FILE``, ``PATH``, ``<time>``) get dummy values.
The README's own config example (``my_configs/experiment/mine.yaml``) is written to a temporary folder
first, so the lines that use it run against exactly what the README shows.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segbench.cli import config_dir, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "docs" / "guide.md"]
PROMPTS = ("segbench ", ".venv/bin/segbench ")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


def bash_lines(path: Path) -> list[str]:
    """The ``segbench ...`` lines of the file's ```bash blocks."""
    lines = []
    for lang, body in FENCE.findall(path.read_text()):
        if lang == "bash":
            lines += [x.strip() for x in body.splitlines() if x.strip().startswith(PROMPTS)]
    return lines


def table_lines(path: Path) -> list[str]:
    """The commands in the first column of the file's tables (``| `segbench ...` | ... |``)."""
    return re.findall(r"^\| `((?:\.venv/bin/)?segbench [^`]+)` \|", path.read_text(), flags=re.M)


def argv_of(line: str) -> list[str]:
    """``segbench train data.root=DIR  # comment`` -> ``["train", "data.root=dummy_dir"]``."""
    words = shlex.split(line, comments=True)
    assert words[0] in ("segbench", ".venv/bin/segbench"), line
    argv = []
    for w in words[1:]:
        if w.startswith("[") and w.endswith("]") and "=" in w and not w.startswith("[file:"):
            w = w[1:-1]  # an optional part of a table row: `[fix=true]`
        w = re.sub(r"<[^<>]+>", "x", w)
        w = re.sub(r"(?<==)DIR\b", "dummy_dir", w)
        w = re.sub(r"(?<==)FILE\b", "dummy_file", w)
        w = re.sub(r"(?<==)PATH\b", "dummy_path", w)
        argv.append(w)
    return argv


CASES = [(p.relative_to(ROOT).as_posix(), line) for p in DOCS for line in bash_lines(p) + table_lines(p)]


@pytest.fixture
def readme_configs(tmp_path, monkeypatch):
    """A working folder holding the config files the README shows (e.g. my_configs/experiment/mine.yaml)."""
    shown = re.findall(r"`([\w./-]+\.yaml)`:\s*\n+```yaml\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert shown, "README shows no config file of the user's own (`DIR/experiment/NAME.yaml`: + a yaml block)"
    for name, text in shown:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGBENCH_START_TIME", "2026-01-01T00:00:00")  # main() sets it; restored afterwards
    return tmp_path


@pytest.mark.parametrize(("doc", "line"), CASES, ids=[f"{d}: {x}" for d, x in CASES])
def test_documented_command_composes(doc, line, readme_configs, capsys):
    argv = argv_of(line)
    status = main([*argv, "--cfg"])
    out, err = capsys.readouterr()
    assert status == 0, f"{doc}: `{line}` does not compose:\n{err}"
    cfg = OmegaConf.create(out)
    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    command = argv[0] if argv[0] != "data" else f"{argv[0]} {argv[1]}"
    for word in argv[len(command.split()) :]:
        if "=" not in word or word.startswith(("+", "~", "hydra.", "--")):
            continue
        key = word.split("=", 1)[0]
        if command == "predict" and key == "model":
            key = "exported"  # what the CLI makes of it
        if key in groups or "/" in key or "@" in key:
            continue
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", f"{doc}: `{line}`: no key {key}"


def test_the_docs_are_really_checked():
    """Not vacuous: the README and the guide hold enough command lines, and the parsing finds them."""
    readme = bash_lines(README)
    assert len(readme) >= 8, readme
    assert len(table_lines(README)) >= 8
    assert len(CASES) >= 25, len(CASES)
    assert {argv_of(c)[0] for _, c in CASES} >= {"train", "compare", "predict", "export", "data"}
    assert any("--config-dir" in x for x in readme) and any("hydra.searchpath" in x for x in readme)


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    used = set()
    for lang, body in FENCE.findall(README.read_text()):
        if lang == "bash":
            used |= {x.split()[1] for x in body.splitlines() if x.startswith("make ")}
    assert used >= {"demo", "test"} and used <= targets, used - targets


def test_readme_stays_short_and_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for doc in DOCS + sorted((ROOT / "docs").glob("*.md")):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
