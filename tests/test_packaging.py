"""Packaging: pyproject.toml and requirements.txt list the same dependencies, every floor is the
version pinned in constraints.txt (the tested set), and installing the project, plain or editable,
puts none of the checkout's generic folder names (datasets, models, utils, ...) on the import path.

The wheels are built offline with the installed setuptools (the PEP 517 / 660 hooks pip calls),
from a copy of the checkout, in a few seconds."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
# The checkout's top-level import names: folders with Python code and the command scripts.
TOP_LEVEL = ("datasets", "models", "utils", "tools", "engine", "demo", "extensions", "segmentation", "bench", "tests",
             "cfgs", "main", "main_vis")

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_lines(path: Path) -> list:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pins() -> dict:
    out = {}
    for line in requirement_lines(REPO / "constraints.txt"):
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: '{line}' is not an exact pin"
        out[canonicalize_name(name)] = Version(version)
    return out


def test_requirements_txt_is_pyproject_dependencies_plus_dev():
    project = pyproject()["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert sorted(requirement_lines(REPO / "requirements.txt")) == sorted(declared)
    assert set(project["optional-dependencies"]) >= {"vis", "dev"}


def test_deploy_extra_is_in_the_test_install():
    """The ONNX export and onnxruntime tests run in `make test`: [dev] holds the [deploy] packages."""
    extras = pyproject()["project"]["optional-dependencies"]
    assert extras["deploy"] and set(extras["deploy"]) <= set(extras["dev"])


def test_floors_are_the_tested_versions():
    project = pyproject()["project"]
    tested = pins()
    every = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for line in every:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in tested, f"{req.name} is not pinned in constraints.txt"
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert floors == [tested[name]], f"{line}: floor should be the tested version {tested[name]}"


def test_make_install_uses_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-r requirements\.txt -c constraints\.txt", makefile)


def test_no_packages_declared():
    setuptools_cfg = pyproject()["tool"]["setuptools"]
    assert setuptools_cfg["packages"] == [] and setuptools_cfg["py-modules"] == []


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """(wheel, editable wheel) built from a copy of the checkout with the installed setuptools."""
    setuptools = pytest.importorskip("setuptools")
    build_req = Requirement(pyproject()["build-system"]["requires"][0])
    if Version(setuptools.__version__) not in build_req.specifier:
        pytest.skip(f"installed setuptools {setuptools.__version__} does not satisfy {build_req}")
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "data", "experiments", "log", "__pycache__",
                                                               ".*cache", "*.egg-info", "build", "dist"))
    out = root / "dist"
    built = []
    for hook in ("build_wheel", "build_editable"):  # one process each, as pip runs them
        script = f"import sys; from setuptools import build_meta as b; print(b.{hook}(sys.argv[1]))"
        result = subprocess.run([sys.executable, "-c", script, str(out)], cwd=src, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        built.append(out / result.stdout.strip().splitlines()[-1])
        assert built[-1].is_file(), built[-1]
    return built[0], built[1], root


def test_wheel_holds_only_metadata(wheels):
    wheel, _, _ = wheels
    names = zipfile.ZipFile(wheel).namelist()
    assert names and all(n.startswith("inter_mae-") and ".dist-info/" in n for n in names), names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "Requires-Dist: torch>=" in metadata and "extra == \"vis\"" in metadata


def test_editable_install_exposes_no_checkout_folder(wheels):
    _, editable, root = wheels
    site = root / "site"
    zipfile.ZipFile(editable).extractall(site)  # what pip does with a pure-Python wheel
    assert list(site.glob("*.pth")), "the editable wheel has no .pth hook"
    probe = ("import importlib.util, json, site, sys; site.addsitedir(sys.argv[1]); "
             f"print(json.dumps([n for n in {list(TOP_LEVEL)!r} if importlib.util.find_spec(n)]))")

    def visible(site_dir: Path) -> list:
        result = subprocess.run([sys.executable, "-I", "-c", probe, str(site_dir)], cwd=root, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert visible(site) == []
    leaky = root / "leaky"  # control: a plain path hook to the checkout copy exposes them all
    leaky.mkdir()
    (leaky / "leak.pth").write_text(str(root / "src") + "\n")
    assert set(visible(leaky)) >= {"datasets", "models", "utils", "engine"}
