"""Artifacts: self-describing, atomic, safe to load, clear errors for bad files."""

import json
import zipfile

import numpy as np
import pytest
import torch

from hgmcli import artifacts
from hgmcli.errors import ArtifactError


def _meta(kind="centroids"):
    return artifacts.make_meta(kind, "cluster", {"k": 3}, seed=7)


def test_npz_round_trip_keeps_arrays_and_metadata(tmp_path):
    p = tmp_path / "c.npz"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    artifacts.save_npz(p, {"centroids": a}, _meta())
    arrays, meta = artifacts.load_npz(p, "centroids")
    np.testing.assert_array_equal(arrays["centroids"], a)
    assert meta["kind"] == "centroids" and meta["seed"] == 7 and meta["config"] == {"k": 3}
    assert meta["format_version"] == artifacts.FORMAT_VERSION
    assert {"hgm", "torch", "numpy", "python"} <= set(meta["versions"])


def test_npz_is_plain_npy_loadable_without_pickle(tmp_path):
    p = tmp_path / "c.npz"
    artifacts.save_npz(p, {"x": np.ones(3)}, _meta())
    with np.load(p, allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["hgm"] == "artifact"


def test_same_content_gives_same_bytes(tmp_path):
    for name in ("a.npz", "b.npz"):
        artifacts.save_npz(tmp_path / name, {"x": np.arange(5)}, {"hgm": "artifact", "format_version": 1})
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_pt_round_trip_is_weights_only(tmp_path):
    p = tmp_path / "n.pt"
    artifacts.save_pt(p, {"w": torch.ones(2, 2), "blocks": [{"stride": 2, "proj": None}]}, _meta("network"))
    obj = torch.load(p, weights_only=True)
    assert isinstance(obj["meta"], str)
    payload, meta = artifacts.load_pt(p, "network")
    assert torch.equal(payload["w"], torch.ones(2, 2)) and payload["blocks"][0]["proj"] is None
    assert meta["kind"] == "network"


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="no such file: .*nope.npz"):
        artifacts.load_npz(tmp_path / "nope.npz")


def test_truncated_npz_is_refused(tmp_path):
    p = tmp_path / "c.npz"
    artifacts.save_npz(p, {"x": np.ones(1000)}, _meta())
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(ArtifactError, match="not a readable .npz"):
        artifacts.load_npz(p)


def test_truncated_pt_is_refused(tmp_path):
    p = tmp_path / "n.pt"
    artifacts.save_pt(p, {"w": torch.ones(100)}, _meta("network"))
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ArtifactError, match="not a readable hgm .pt file"):
        artifacts.load_pt(p)


def test_foreign_npz_is_refused(tmp_path):
    p = tmp_path / "foreign.npz"
    np.savez(p, x=np.ones(3))
    with pytest.raises(ArtifactError, match="not an hgm artifact"):
        artifacts.load_npz(p, "centroids")


def test_object_array_npz_is_refused(tmp_path):
    p = tmp_path / "evil.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ArtifactError, match="object arrays"):
        artifacts.load_npz(p, require_meta=False)


def test_pickled_code_in_pt_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        torch.save({"meta": "{}", "x": Evil()}, f)
    with pytest.raises(ArtifactError):
        artifacts.load_pt(p)
    assert not (tmp_path / "pwned").exists()


def test_wrong_kind_and_version(tmp_path):
    p = tmp_path / "c.npz"
    artifacts.save_npz(p, {"x": np.ones(1)}, _meta("centroids"))
    with pytest.raises(ArtifactError, match="is a centroids file, expected network"):
        artifacts.load_npz(p, "network")
    meta = _meta()
    meta["format_version"] = 99
    artifacts.save_npz(p, {"x": np.ones(1)}, meta)
    with pytest.raises(ArtifactError, match="has format version 99"):
        artifacts.load_npz(p)


def test_failed_write_leaves_nothing(tmp_path):
    p = tmp_path / "c.npz"
    with pytest.raises(ValueError):
        artifacts.save_npz(p, {"x": np.array([object()])}, _meta())
    assert list(tmp_path.iterdir()) == []

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        artifacts.write_file(p, boom)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination():
    if not __import__("os").path.isdir("/proc/self"):
        pytest.skip("needs /proc (Linux) for a folder nobody can write")
    with pytest.raises(ArtifactError, match="cannot write /proc/x.npz"):
        artifacts.ensure_writable("/proc/x.npz")


def test_out_path_that_is_a_directory(tmp_path):
    with pytest.raises(ArtifactError, match="is a directory"):
        artifacts.ensure_writable(tmp_path)


def test_out_path_under_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ArtifactError, match="cannot write"):
        artifacts.ensure_writable(f / "x.npz")


def test_input_hashes_recorded(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"abc")
    meta = artifacts.make_meta("centroids", "cluster", {}, inputs={"data": src, "model": None})
    assert meta["inputs"] == {"data": {"path": str(src), "sha256": artifacts.file_hash(src)}}
    assert len(meta["inputs"]["data"]["sha256"]) == 64


def test_zip_entries_have_fixed_timestamps(tmp_path):
    p = tmp_path / "c.npz"
    artifacts.save_npz(p, {"x": np.ones(2)}, _meta())
    with zipfile.ZipFile(p) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


