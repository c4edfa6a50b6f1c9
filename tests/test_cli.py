"""The command line: help for every command, one-line errors with exit 1,
usage errors with exit 2, nothing half-written."""

import json

import pytest
from typer.testing import CliRunner

from hgmcli import __version__
from hgmcli.cli import app

runner = CliRunner()
COMMANDS = ["generate", "cluster", "train-layer", "fit-svm", "evaluate", "export", "pipeline", "baseline", "search",
            "doctor"]


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
    r = run("generate", "--patches-per-class", "notanumber")
    assert r.exit_code == 2
    r = run("no-such-command")
    assert r.exit_code == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--patches-per-class", "0"], "Error: config key 'generate.patches_per_class': must be >= 1, got 0"),
        (["--depth", "0"], "Error: config key 'generate.depth': must be >= 1, got 0"),
                (["--patch-size", "1", "--orthonormal"], "Error: --orthonormal needs"),
        (["--family", "nope"], "Error: config key 'generate.family': expected one of hierarchical, digits; got 'nope' (str)"),
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


def test_cluster_and_train_layer_json_is_parseable(tmp_path):
    """--json prints the stage's stats as JSON (numpy arrays such as the cluster sizes included)."""
    d, c, n = tmp_path / "d.npz", tmp_path / "c.npz", tmp_path / "n.pt"
    assert run("generate", "--out", d, "--n-train", 200, "--n-test", 20, "--depth", 2).exit_code == 0
    r = run("cluster", "--data", d, "--patches", 500, "--out", c, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert sum(info["stats"]["sizes"]) == 500 and info["outputs"]["centroids"] == str(c)
    r = run("train-layer", "--data", d, "--centroids", c, "--mode", "gd-linear", "--out", n, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"]["network"] == str(n)


def test_unknown_set_key_is_named(tmp_path):
    r = run("generate", "--out", tmp_path / "d.npz", "--set", "generate.kk=3")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: unknown config key 'generate.kk' (known: family, depth")


def test_missing_files_are_one_line_errors(tmp_path):
    r = run("cluster", "--data", tmp_path / "nope.npz", "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.strip() == f"Error: data not found: {tmp_path / 'nope.npz'}"
    r = run("generate", "--out", tmp_path / "d.npz", "--n-train", 20, "--n-test", 10, "--depth", 2)
    r = run("evaluate", "--data", tmp_path / "d.npz", "--classifier", tmp_path / "cls.pt")
    assert r.exit_code == 1 and r.stderr.strip() == f"Error: no such file: {tmp_path / 'cls.pt'}"


def test_no_data_given(tmp_path, monkeypatch):
    monkeypatch.delenv("HGM_DATA", raising=False)
    r = run("cluster", "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.strip() == "Error: no data given: pass --data or set HGM_DATA"


def _npz(path, x, y):
    import numpy as np

    np.savez(path, x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    return path


def test_cluster_input_errors_are_one_line(tmp_path):
    import numpy as np

    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    y = np.arange(20) % 2
    data = _npz(tmp_path / "d.npz", x, y)
    r = run("cluster", "--data", data, "--k", 500, "--patches", 100, "--val-size", 0, "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.strip() == "Error: k=500 is larger than the number of patches (100)"
    x[3, 0, 2, 2] = np.nan
    bad = _npz(tmp_path / "nan.npz", x, y)
    r = run("cluster", "--data", bad, "--patches", 100, "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "NaN" in r.stderr and r.stderr.count("\n") == 1
    empty = tmp_path / "images"
    (empty / "cat").mkdir(parents=True)
    r = run("cluster", "--data", empty, "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1
    assert not (tmp_path / "c.npz").exists()


def test_missing_test_batch_is_one_line(tmp_path, cifar):
    r = run("evaluate", "--data", cifar, "--split", "test", "--classifier", tmp_path / "none.pt")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ")


def test_train_layer_refuses_centroids_of_the_wrong_width(tmp_path):
    import numpy as np

    from hgmcli import artifacts

    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    data = _npz(tmp_path / "d.npz", x, np.arange(20) % 2)
    c = tmp_path / "c.npz"
    artifacts.save_npz(c, {"centroids": np.ones((4, 3, 3, 3), np.float32)},
                       artifacts.make_meta("centroids", "cluster", {}, preprocess={"scale": 1.0, "mean": [0.0], "std": [1.0]}))
    r = run("train-layer", "--data", data, "--centroids", c, "--out", tmp_path / "n.pt")
    assert r.exit_code == 1
    assert r.stderr.strip() == f"Error: {c}: centroids have 3 channels but the network outputs 1; cluster the output of this network (--model)"
    assert not (tmp_path / "n.pt").exists()


def test_train_layer_refuses_a_network_of_another_format_version(tmp_path):
    import numpy as np

    from hgmcli import artifacts

    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    data = _npz(tmp_path / "d.npz", x, np.arange(20) % 2)
    meta = artifacts.make_meta("network", "train-layer", {})
    meta["format_version"] = 0
    net = tmp_path / "old.pt"
    artifacts.save_pt(net, {"blocks": []}, meta)
    r = run("cluster", "--data", data, "--model", net, "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.strip().startswith(f"Error: {net} has format version 0; this hgm")


def test_nan_loss_stops_with_the_step_and_writes_nothing(tmp_path):
    import numpy as np

    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    data = _npz(tmp_path / "d.npz", x, np.arange(64) % 2)
    assert run("cluster", "--data", data, "--k", 8, "--patches", 500, "--patch-size", 3, "--stride", 1,
               "--out", tmp_path / "c.npz").exit_code == 0
    r = run("train-layer", "--data", data, "--centroids", tmp_path / "c.npz", "--activation", "relu", "--lr", "1e30",
            "--batch-size", 16, "--out", tmp_path / "n.pt")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: 1x1 conv (adam-ce): the loss became nan at step ")
    assert r.stderr.strip().endswith("lower the learning rate (lr)") and r.stderr.count("\n") == 1
    assert not (tmp_path / "n.pt").exists()


# --------------------------------------------------------------------------- renamed options, -v/-q (issue 12)


def test_old_option_spellings_still_work_with_one_warning_each(tmp_path):
    new = run("generate", "--out", tmp_path / "new.npz", "--family", "hierarchical", "--patches-per-class", 3,
              "--depth", 2, "--classes", 3, "--n-train", 40, "--n-test", 10)
    old = run("generate", "--out", tmp_path / "old.npz", "--model", "hierarchical", "--k", 3,
              "--depth", 2, "--classes", 3, "--n-train", 40, "--n-test", 10)
    assert new.exit_code == 0 and old.exit_code == 0, old.output
    assert new.stderr == ""
    assert old.stderr.splitlines() == ["Warning: --model is deprecated; use --family",
                                       "Warning: --k is deprecated; use --patches-per-class"]
    from hgmcli import artifacts

    a, b = (artifacts.load_npz(tmp_path / f, "dataset")[0]["x_train"] for f in ("new.npz", "old.npz"))
    assert (a == b).all()


def test_both_spellings_of_one_option_is_an_error(tmp_path):
    r = run("generate", "--out", tmp_path / "d.npz", "--k", 3, "--patches-per-class", 4)
    assert r.exit_code == 1 and r.stderr.strip() == "Error: --k and --patches-per-class are the same option: keep --patches-per-class"


def test_verbose_after_the_command_logs_lines_when_stderr_is_not_a_terminal(tmp_path):
    r = run("generate", "--out", tmp_path / "d.npz", "--n-train", 40, "--n-test", 10, "--depth", 2, "-v")
    assert r.exit_code == 0
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith("[generate] ") for line in lines), r.stderr
    r = run("-q", "generate", "--out", tmp_path / "e.npz", "--n-train", 40, "--n-test", 10, "--depth", 2)
    assert r.exit_code == 0 and r.stderr == ""
