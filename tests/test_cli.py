"""The command line: help for every command, one-line errors with exit 1,
usage errors with exit 2, nothing half-written."""

import json

import pytest
from typer.testing import CliRunner

from hgmcli import __version__
from hgmcli.cli import app

runner = CliRunner()
COMMANDS = ["generate", "cluster", "train-layer", "fit-svm", "evaluate", "export", "pipeline", "baseline", "search"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"hgm {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    r = run(command, "--help")
    assert r.exit_code == 0
    assert "Examples" in r.stdout and "hgm " + command in r.stdout


def test_every_command_is_listed_in_the_main_help():
    r = run("--help")
    for command in COMMANDS:
        assert command in r.stdout


def test_usage_error_exits_2():
    r = run("generate", "--k", "notanumber")
    assert r.exit_code == 2
    r = run("no-such-command")
    assert r.exit_code == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--k", "0"], "Error: --k must be >= 1, got 0"),
        (["--depth", "0"], "Error: --depth must be >= 1, got 0"),
        (["--patch-size", "1", "--orthonormal"], "Error: --orthonormal needs"),
        (["--model", "nope"], "Error: config key 'generate.model': expected one of hierarchical, digits; got 'nope'"),
        (["--classes", "a,b"], "Error: --classes expects integers separated by commas, got 'a,b'"),
    ],
)
def test_generate_bad_parameters(tmp_path, args, message):
    out = tmp_path / "d.npz"
    r = run("generate", "--out", out, "--n-train", 20, "--n-test", 10, *args)
    assert r.exit_code == 1
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1
    assert "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_generate_unwritable_out_leaves_nothing():
    r = run("generate", "--out", "/proc/hgm-test.npz", "--n-train", 20, "--n-test", 10)
    assert r.exit_code == 1 and r.stderr.startswith("Error: cannot write /proc/hgm-test.npz")


def test_generate_writes_data_and_json(tmp_path):
    out = tmp_path / "d.npz"
    r = run("generate", "--out", out, "--n-train", 40, "--n-test", 20, "--depth", 2, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["outputs"]["data"] == str(out) and out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temp files left


def test_unknown_set_key_is_named(tmp_path):
    r = run("generate", "--out", tmp_path / "d.npz", "--set", "generate.kk=3")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: unknown config key 'generate.kk' (known: model, depth")


def test_missing_files_are_one_line_errors(tmp_path):
    r = run("cluster", "--data", tmp_path / "nope.npz", "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.strip() == f"Error: data not found: {tmp_path / 'nope.npz'}"
    r = run("evaluate", "--data", tmp_path / "nope.npz", "--classifier", tmp_path / "cls.pt")
    assert r.exit_code == 1 and r.stderr.strip() == f"Error: no such file: {tmp_path / 'cls.pt'}"


def test_no_data_given(tmp_path, monkeypatch):
    monkeypatch.delenv("HGM_DATA", raising=False)
    r = run("cluster", "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.strip() == "Error: no data given: pass --data or set HGM_DATA"
