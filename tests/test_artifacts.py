"""Artifacts: self-describing, atomic, safe to load, clear errors for bad files."""

import json
import zipfile
from pathlib import Path

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


# --------------------------------------------------------------------------- output guards


def _special_files(tmp_path):
    """A FIFO, a socket and (as root, where the danger is) a character device, all inside tmp_path."""
    import os
    import socket
    import stat

    files = {}
    os.mkfifo(tmp_path / "fifo")
    files["fifo"] = "a FIFO"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.close()
    files["sock"] = "a socket"
    if os.geteuid() == 0:  # a copy of /dev/null's device numbers, safe to lose
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        files["null"] = "a character device"
    return files


def test_guard_refuses_special_files_and_leaves_them_special(tmp_path):
    import os

    for name, kind in _special_files(tmp_path).items():
        mode = os.stat(tmp_path / name).st_mode
        (tmp_path / f"{name}-link").symlink_to(tmp_path / name)
        for target in (tmp_path / name, tmp_path / f"{name}-link"):
            with pytest.raises(ArtifactError, match=f"cannot write {target}: it is {kind}, not a regular file"):
                artifacts.guard_output(target)
            with pytest.raises(ArtifactError, match=f"it is {kind}"):  # the writer refuses too
                artifacts.save_json(target, {})
        assert os.stat(tmp_path / name).st_mode == mode
    assert not artifacts.leftover_temporaries(tmp_path)


def test_guard_refuses_the_same_file_as_an_input_however_it_is_spelled(tmp_path, monkeypatch):
    import os

    data = tmp_path / "d.npz"
    artifacts.save_npz(data, {"x": np.ones(3)}, _meta("dataset"))
    before = data.read_bytes()
    os.link(data, tmp_path / "hard.npz")
    (tmp_path / "soft.npz").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for out in ("d.npz", "./d.npz", str(data), "hard.npz", "soft.npz", "../" + tmp_path.name + "/d.npz"):
        with pytest.raises(ArtifactError, match=f"cannot write .*: it is the same file as the input {data}"):
            artifacts.guard_output(out, inputs=[None, data])
        # The writers check the inputs recorded in the metadata, whoever calls them.
        meta = artifacts.make_meta("centroids", "cluster", {}, inputs={"data": "d.npz"})
        with pytest.raises(ArtifactError, match="it is the same file as the input d.npz"):
            artifacts.save_npz(out, {"centroids": np.zeros(2)}, meta)
        with pytest.raises(ArtifactError, match="same file as the input"):
            artifacts.save_json(out, {}, inputs=["d.npz"])
    assert data.read_bytes() == before
    assert artifacts.guard_output("new.npz", inputs=[data]) == Path("new.npz")


def test_a_symlink_out_is_written_through_and_stays_a_link(tmp_path):
    target, link = tmp_path / "real" / "c.npz", tmp_path / "c.npz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link.symlink_to(target)
    artifacts.save_npz(link, {"x": np.arange(3)}, _meta())
    assert link.is_symlink() and link.resolve() == target
    np.testing.assert_array_equal(artifacts.load_npz(target)[0]["x"], np.arange(3))
    dangling = tmp_path / "d.json"
    dangling.symlink_to(tmp_path / "new" / "d.json")
    artifacts.save_json(dangling, {"a": 1})
    assert dangling.is_symlink() and json.loads((tmp_path / "new" / "d.json").read_text()) == {"a": 1}
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ArtifactError, match=f"cannot write {loop}: Too many levels of symbolic links"):
        artifacts.guard_output(loop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "d.json", "loop", "new", "real"]


def test_leftover_temporaries_are_only_this_modules(tmp_path):
    (tmp_path / "sub").mkdir()
    ours = [tmp_path / ".c.npz.hgm-abc123.tmp", tmp_path / "sub" / ".n.pt.hgm-x.probe"]
    theirs = [tmp_path / ".notes.tmp", tmp_path / "c.tmp", tmp_path / "sub" / "x.probe"]
    for f in ours + theirs:
        f.write_text("x")
    assert sorted(artifacts.leftover_temporaries(tmp_path)) == sorted(ours)

    def boom(tmp):
        assert tmp.name.startswith(".c.npz.hgm-") and tmp.suffix == ".tmp"  # the name the cleanup looks for
        raise RuntimeError

    with pytest.raises(RuntimeError):
        artifacts.write_file(tmp_path / "c.npz", boom)


# --------------------------------------------------------------------------- foreign files as artifacts


@pytest.mark.parametrize("name", ["r.npz", "r.pt"])
def test_random_bytes_are_not_a_zip_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(0).bytes(3000))
    load = artifacts.load_npz if name.endswith(".npz") else artifacts.load_pt
    want = (f"^{p}: not a readable .npz \\(not a zip archive of .npy arrays: File is not a zip file\\)$"
            if name.endswith(".npz") else f"^{p} is not a readable hgm .pt file \\(not a zip file: truncated, or another format\\)$")
    with pytest.raises(ArtifactError, match=want):
        load(p)


def test_other_zips_are_named(tmp_path):
    npz, pt = tmp_path / "d.npz", tmp_path / "n.pt"
    np.savez(npz, x=np.ones(2))
    torch.save({"w": torch.ones(1)}, pt)
    with pytest.raises(ArtifactError, match=f"^{npz} is not an hgm .pt file \\(a zip file, but not one torch.save"):
        artifacts.load_pt(npz)
    with pytest.raises(ArtifactError, match=f"^{pt}: member '.*data.pkl' is not a .npy array$"):
        artifacts.load_npz(pt)


def test_torchscript_file_is_one_clean_error(tmp_path):
    import warnings

    p = tmp_path / "export.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's own deprecation notices
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2))), str(p))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ArtifactError, match=f"^{p} is a TorchScript export, not an hgm network$"):
            artifacts.load_pt(p, "network")
        with pytest.raises(ArtifactError, match="TorchScript export, not an hgm network or classifier$"):
            artifacts.load_pt(p, ("network", "classifier"))
    assert caught == []


def test_npz_header_claiming_more_than_the_file_holds(tmp_path):
    """A 2 KB file whose .npy header claims 10^12 images: refused before numpy allocates 256 TB."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 1, 8, 8)})
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        p = tmp_path / f"bomb{compression}.npz"
        with zipfile.ZipFile(p, "w", compression=compression) as z:
            z.writestr("x_train.npy", header.getvalue() + bytes(2000))
        claim = r"'x_train' claims shape \(1000000000000, 1, 8, 8\) of float32 \(256000000000000 bytes\), but holds"
        with pytest.raises(ArtifactError, match=claim + " 2000 bytes: truncated or corrupt"):
            artifacts.load_npz(p, require_meta=False)
