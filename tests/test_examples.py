"""examples/Makefile: the single commands chained through files."""

import json
import shutil
import sys
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_makefile_chain_builds_and_rebuilds_only_what_changed(tmp_path):
    hgm = f"{sys.executable} -m hgmcli"
    make = ["make", "-C", str(REPO / "examples"), f"OUT={tmp_path}", f"HGM={hgm}", "-j2"]
    subprocess.run(make, check=True, capture_output=True)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["accuracy"] == 1.0 and all(e["ari"] == 1.0 for e in m["latent_recovery"])
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    # Nothing to do the second time.
    dry = subprocess.run(make + ["-n"], check=True, capture_output=True, text=True).stdout
    assert "hgmcli" not in dry
    # Remove the second network: only it and what follows are rebuilt.
    (tmp_path / "network2.pt").unlink()
    time.sleep(0.01)
    subprocess.run(make, check=True, capture_output=True)
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    rebuilt = {name for name in stamps if after[name] != stamps[name]}
    assert rebuilt == {"network2.pt", "classifier.pt", "metrics.json"}  # data, centroids, network1 untouched
