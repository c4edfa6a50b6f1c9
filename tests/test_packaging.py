"""Packaging: the bundled configs and their names, the distribution's metadata,
and what the built wheel holds. (CI installs that wheel into a fresh venv and
runs `hgm pipeline --config smoke` from an empty folder: `make wheel-smoke`.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hgmcli.config import PipelineConfig, load_config
from hgmcli.errors import ConfigError
from hgmcli.presets import CONFIG_DIR, bundled, list_configs, resolve_config

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in (REPO / "hgmcli" / "configs").glob("*.yaml"))
SHIPPED = {"cifar", "cifar-cpu", "cifar-jl", "cifar-jl-linear", "cifar-linear", "digits", "smoke", "synthetic"}


def test_configs_ship_inside_the_package_and_the_checkout_link_points_there():
    assert CONFIG_DIR == REPO / "hgmcli" / "configs"
    assert (REPO / "configs").is_symlink() and (REPO / "configs").resolve() == CONFIG_DIR
    assert (REPO / "configs" / "smoke.yaml").read_bytes() == (CONFIG_DIR / "smoke.yaml").read_bytes()


def test_every_bundled_config_is_listed_with_its_purpose_and_loads():
    listed = list_configs()
    assert [name for name, _ in listed] == NAMES == list(bundled())
    assert SHIPPED <= set(NAMES)
    purposes = dict(listed)
    assert purposes["smoke"] == "a tiny synthetic hierarchical model, the whole of Algorithm 1."
    assert purposes["cifar"] == "the paper's \"Ours+FC\" on CIFAR-10 (Figure 3), with appendix C's parameters"
    for name, purpose in listed:
        assert purpose and "\n" not in purpose and not purpose.startswith(("#", name)), name
        load_config(PipelineConfig, resolve_config(name))  # unknown keys / wrong types would raise


@pytest.mark.parametrize("spelling", ["smoke", "smoke.yaml", "configs/smoke.yaml"])
def test_a_bundled_name_resolves_from_an_empty_folder(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(spelling) == CONFIG_DIR / "smoke.yaml"


def test_an_existing_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke.yaml").write_text("seed: 3\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "smoke.yaml").write_text("seed: 4\n")
    assert resolve_config("smoke.yaml") == Path("smoke.yaml")
    assert resolve_config("configs/smoke.yaml") == Path("configs/smoke.yaml")
    assert resolve_config(tmp_path / "smoke.yaml") == tmp_path / "smoke.yaml"
    assert resolve_config("smoke") == CONFIG_DIR / "smoke.yaml"  # no file called `smoke` here


def test_an_unknown_config_is_one_line_listing_the_bundled_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listing = ", ".join(NAMES)
    with pytest.raises(ConfigError) as e:
        resolve_config("smoek")
    assert str(e.value) == f"config 'smoek': no such file, and not a bundled config (bundled: {listing})"
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match=r"^config 'runs': is a folder, not a config file, and not a bundled"):
        resolve_config("runs")
    with pytest.raises(ConfigError, match=r"^config 'elsewhere/smoke.yaml': no such file"):
        resolve_config("elsewhere/smoke.yaml")  # only the README's configs/NAME.yaml spelling falls back


def test_the_distribution_metadata():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "hgmcli"  # "hgm" on PyPI is someone else's library
    assert project["scripts"] == {"hgm": "hgmcli.cli:main"}
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    extras = project["optional-dependencies"]
    assert extras["faiss"] == ["faiss-cpu>=1.7"] and extras["gpu"] == ["faiss-gpu>=1.15"]
    assert {"tensorboard", "onnx", "dev"} <= set(extras)
    assert meta["tool"]["setuptools"]["package-data"] == {"hgmcli": ["configs/*.yaml"]}


def test_the_wheel_holds_the_configs_the_license_and_the_entry_point(tmp_path):
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"building offline needs setuptools >= 77 here, found {setuptools.__version__}")
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "hgmcli", src / "hgmcli", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("hgmcli-0.1.0-py3-none-any")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read("hgmcli-0.1.0.dist-info/METADATA").decode()
        entry_points = z.read("hgmcli-0.1.0.dist-info/entry_points.txt").decode()
    assert {f"hgmcli/configs/{n}.yaml" for n in NAMES} <= names
    assert {"hgmcli/presets.py", "hgmcli/doctor.py", "hgmcli-0.1.0.dist-info/licenses/LICENSE"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names)
    assert "Name: hgmcli\n" in metadata and "License-Expression: MIT\n" in metadata
    assert "Provides-Extra: gpu\n" in metadata and "Requires-Dist: faiss-gpu>=1.15; extra == \"gpu\"\n" in metadata
    assert "hgm = hgmcli.cli:main" in entry_points


# ----------------------------------------------------------------- through the CLI


def _cli():
    from typer.testing import CliRunner

    from hgmcli.cli import app

    return lambda *args: CliRunner().invoke(app, list(args))


def test_pipeline_lists_the_bundled_configs_and_refuses_an_unknown_name(tmp_path, monkeypatch):
    run = _cli()
    monkeypatch.chdir(tmp_path)
    r = run("pipeline", "--list-configs")
    assert r.exit_code == 0 and all(name in r.stdout for name in NAMES)
    r = run("pipeline", "--config", "smoek")
    assert r.exit_code == 1
    assert r.stderr.strip() == f"Error: config 'smoek': no such file, and not a bundled config (bundled: {', '.join(NAMES)})"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_command_reads_a_bundled_config_by_name_from_an_empty_folder(tmp_path, monkeypatch):
    run = _cli()
    monkeypatch.chdir(tmp_path)
    r = run("generate", "--config", "smoke", "--out", "d.npz")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d.npz").exists()
