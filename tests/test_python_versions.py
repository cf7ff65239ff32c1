"""The Python versions: pyproject.toml and the Makefile agree, and the Makefile picks its
interpreter (or refuses) as documented. The Makefile runs with `make -n` against fake
interpreters (shell scripts printing a version), so nothing is installed or created."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")


def _supported():
    """PY_SUPPORTED in the Makefile, e.g. ["3.10", "3.11", "3.12"]."""
    return re.search(r"^PY_SUPPORTED := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()


def test_makefile_and_pyproject_agree_on_the_versions():
    # tomllib is 3.11+, and this runs on 3.10 too
    spec = re.search(r'^requires-python = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    lo, hi = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec).groups()
    assert _supported() == [f"3.{m}" for m in range(int(lo), int(hi))]
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in _supported()


def _fake_python(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def _make(tmp_path, *args, path_dir=None):
    """`make -n setup VENV=...` with PATH holding only path_dir (no real python in reach)."""
    path_dir = path_dir or tmp_path / "bin"
    path_dir.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": str(path_dir)}
    env.pop("PYTHON", None)
    return subprocess.run(
        [MAKE, "-n", "--no-print-directory", "-C", str(ROOT), "setup", f"VENV={tmp_path / 'venv'}", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )


pytestmark = pytest.mark.skipif(MAKE is None, reason="needs make")


def test_prefers_3_11_then_the_versions_with_the_same_pins(tmp_path):
    _fake_python(tmp_path / "bin" / "python3", "3.9.18")
    chosen = []
    for name, version in [("python3.10", "3.10.13"), ("python3.13", "3.13.0"),
                          ("python3.12", "3.12.1"), ("python3.11", "3.11.7")]:
        _fake_python(tmp_path / "bin" / name, version)
        chosen.append(re.search(r"^(\S+) -m venv ", _make(tmp_path).stdout, re.M).group(1))
    assert chosen == ["python3.10", "python3.13", "python3.12", "python3.11"]


def test_skips_a_name_that_does_not_run(tmp_path):
    # a pyenv shim for a version pyenv hasn't selected: on PATH, fails
    (tmp_path / "bin").mkdir()
    shim = tmp_path / "bin" / "python3.11"
    shim.write_text("#!/bin/sh\necho \"pyenv: python3.11: command not found\" >&2\nexit 127\n")
    shim.chmod(0o755)
    _fake_python(tmp_path / "bin" / "python3", "3.10.13")
    assert re.search(r"^python3 -m venv ", _make(tmp_path).stdout, re.M)


def test_no_suitable_python_says_so_and_creates_nothing(tmp_path):
    _fake_python(tmp_path / "bin" / "python3", "3.9.18")
    run = _make(tmp_path)
    assert run.returncode != 0
    lo, hi = _supported()[0], _supported()[-1]
    assert f"sparrow-plugin needs Python {lo}-{hi}; found python3.11 (not found)" in run.stderr
    assert "python3 (3.9.18). Install one" in run.stderr
    assert run.stdout == "" and not (tmp_path / "venv").exists()


def test_given_python_is_checked(tmp_path):
    old = _fake_python(tmp_path / "py39" / "python", "3.9.18")
    run = _make(tmp_path, f"PYTHON={old}")
    assert run.returncode != 0 and f"found PYTHON={old} (3.9.18)" in run.stderr
    ok = _fake_python(tmp_path / "py312" / "python", "3.12.1")
    assert re.search(rf"^{re.escape(str(ok))} -m venv ", _make(tmp_path, f"PYTHON={ok}").stdout, re.M)


def _fake_venv(tmp_path, version, pip=True):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("")
    _fake_python(venv / "bin" / "python", version)
    if pip:
        _fake_python(venv / "bin" / "pip", "pip")
    return venv


def test_an_existing_venv_is_kept_when_it_fits(tmp_path):
    _fake_python(tmp_path / "bin" / "python3.11", "3.11.7")
    _fake_venv(tmp_path, "3.12.1")
    run = _make(tmp_path)
    assert run.returncode == 0, run.stderr
    assert " -m venv " not in run.stdout and "bin/pip install" in run.stdout


@pytest.mark.parametrize("version,pip,extra,message", [
    ("3.9.18", True, [], "has Python 3.9.18 but sparrow-plugin needs Python"),
    ("3.11.7", False, [], "has no pip"),
    ("3.11.7", True, ["PYTHON={py312}"], "has Python 3.11.7 but PYTHON={py312} is 3.12.1"),
])
def test_an_existing_venv_that_does_not_fit_stops_make(tmp_path, version, pip, extra, message):
    py312 = _fake_python(tmp_path / "py312" / "python", "3.12.1")
    _fake_python(tmp_path / "bin" / "python3.11", "3.11.7")
    venv = _fake_venv(tmp_path, version, pip=pip)
    run = _make(tmp_path, *[a.format(py312=py312) for a in extra])
    assert run.returncode != 0 and message.format(py312=py312) in run.stderr
    assert f"rm -rf {venv}" in run.stderr and run.stdout == ""
