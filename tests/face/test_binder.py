"""binder/, as mybinder.org (repo2docker) uses it: requirements pinned as the kit's own, postBuild
installing the kit and making the profile's data, start setting the profile. The build on
mybinder.org itself cannot run here (no network); docs/binder.md has the limits measured instead."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from patchgd_kit.runs.profiles import get_profile

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
# Pinned for the kit but not installed on Binder: a Binder user runs notebooks 01-04, not the tests,
# nor Streaming SGD (`--method streaming`, the only importer of lightstream and lightning).
NOT_ON_BINDER = {"nbval", "nbstripout", "pytest", "pyflakes", "playwright", "lightstream", "lightning"}
CPU_BUILDS = {"torch", "torchvision"}  # PyTorch's CPU-only wheels, a tenth of the CUDA ones


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith(("#", "-")):
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            pins[name.lower()] = version
    return pins


def test_binder_requirements_pin_the_kits_versions_with_cpu_torch():
    kit, binder = _pins(ROOT / "requirements.txt"), _pins(BINDER / "requirements.txt")
    assert set(binder) == set(kit) - NOT_ON_BINDER
    for name, version in binder.items():
        assert version == (f"{kit[name]}+cpu" if name in CPU_BUILDS else kit[name]), name
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (BINDER / "requirements.txt").read_text()


def test_binder_runtime_is_a_python_the_kit_supports():
    version = re.fullmatch(r"python-3\.(\d+)", (BINDER / "runtime.txt").read_text().strip())
    assert version and int(version.group(1)) >= 10  # pyproject: requires-python >= 3.10


def _run_post_build(tmp_path, pip_exit: int):
    """binder/postBuild with `pip` standing in (it logs its arguments) and this venv's python."""
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    (shims / "pip").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/pip.log\nexit {pip_exit}\n')
    (shims / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "KIT_RUNS": str(tmp_path / "runs")}
    env.pop("KIT_PROFILE", None)
    return subprocess.run(["bash", str(BINDER / "postBuild")], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_post_build_installs_the_kit_then_makes_the_binder_data(tmp_path):
    run = _run_post_build(tmp_path, pip_exit=0)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "pip.log").read_text() == "install --no-deps -e .\n"
    data = list((tmp_path / "runs" / "binder" / "data").glob("ultramnist_*"))
    assert len(data) == 1 and (data[0] / "train").is_dir() and (data[0] / "test").is_dir()


def test_post_build_stops_when_the_install_fails(tmp_path):
    run = _run_post_build(tmp_path, pip_exit=1)
    assert run.returncode != 0 and not (tmp_path / "runs").exists()  # set -e: nothing after a failure


def test_start_sets_the_binder_profile_and_runs_the_server_command():
    env = {key: value for key, value in os.environ.items() if key != "KIT_PROFILE"}
    run = subprocess.run([str(BINDER / "start"), "sh", "-c", 'echo "$KIT_PROFILE"'], env=env,
                         capture_output=True, text=True, check=True)
    assert run.stdout == "binder\n"
    assert get_profile(run.stdout.strip()).name == "binder"
