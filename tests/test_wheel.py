"""segbench as a user installs it: a wheel, non-editable, in a new virtual environment, run from an empty
folder — its configs must come from inside the package, not from a checkout."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Top-level folders of the checkout that the wheel is not built from.
SKIP = {".venv", ".git", "outputs", "data", "build", "dist", ".pytest_cache", ".ruff_cache"}


def run(cmd: list[str], *, cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{out[-4000:]}"
    return out


@pytest.mark.slow
def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    # Build from a copy, so that the checkout gets no build/ or egg-info folder.
    src = tmp_path / "src"
    top = str(REPO)
    shutil.copytree(
        REPO, src, symlinks=True, ignore=lambda d, names: [n for n in names if n in SKIP and d == top]
    )
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)], cwd=tmp_path)
    (wheel,) = wheels.glob("segbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "segbench/configs/train.yaml" in names and "segbench/configs/model/maskrcnn_r18.yaml" in names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)

    # A new venv holding only the wheel; torch & co. come from this environment's site-packages
    # (added with a .pth after the install, so that pip cannot see, or touch, what is installed here).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    (new_site,) = (venv / "lib").glob("python3*/site-packages")
    (new_site / "segbench_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGBENCH_", "PYTHON"))}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", SEGBENCH_LOG_LEVEL="WARNING")
    where = run(
        [str(py), "-c", "import segbench.cli as c; print(c.__file__); print(c.config_dir())"],
        cwd=work,
        env=env,
    )
    assert str(new_site) in where.splitlines()[0], where  # the installed copy, not the checkout
    assert str(REPO) not in where, where

    sb = str(venv / "bin" / "segbench")
    out = run(
        [sb, "data", "synth", "out=data/synth", "num_train=6", "num_val=2", "image_size=64"],
        cwd=work,
        env=env,
    )
    assert (work / "data/synth/annotations/instances_train.json").is_file(), out
    out = run(
        [
            sb, "train", "debug=tiny", "data.root=data/synth", "trainer.max_steps=2",
            "model.net.min_size=64", "model.net.max_size=64",
        ],
        cwd=work,
        env=env,
    )  # fmt: skip
    (metrics,) = (work / "outputs/train/default").glob("*/metrics.json")
    m = json.loads(metrics.read_text())
    assert m["global_step"] == 2 and 0 <= m["val"]["segm_AP"] <= 1, out
    print(where + out)  # shown with -s: the wheel install test's output
