"""hgmcli.data: the three sources, the paper's splits, the safe CIFAR-10
unpickler and normalisation. Everything is built in tmp_path except the
``cifar``-marked test, which reads the real batches."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from hgmcli import artifacts, data
from hgmcli.config import DataConfig
from hgmcli.data import Dataset, iter_batches, load_dataset, normalization, resolve_root
from hgmcli.errors import ArtifactError, DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def cfg(root, **kw) -> DataConfig:
    return DataConfig(root=str(root), **kw)


# --------------------------------------------------------------------------- .npz


def write_synthetic(path: Path, n_train=20, n_test=10) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(n_train, 1, 4, 4)).astype(np.float32),
        "y_train": np.arange(n_train) % 2,
        "x_test": rng.normal(size=(n_test, 1, 4, 4)).astype(np.float32),
        "y_test": np.arange(n_test) % 2,
        "latent_train_0": np.arange(n_train)[:, None] * np.ones((1, 4), int),  # row i is all i
        "patch_train_1": np.arange(n_train)[:, None] * np.ones((1, 16), int),
        "latent_test_0": np.arange(n_test)[:, None] * np.ones((1, 4), int),
        "model_patches_1": rng.normal(size=(8, 4)),
    }
    meta = artifacts.make_meta(
        "dataset", "generate", {"depth": 2}, model={"depth": 2, "patch_size": 2, "label_names": ["minus", "plus"]}
    )
    artifacts.save_npz(path, arrays, meta)
    return arrays


def test_npz_synthetic_splits_latents_and_model(tmp_path):
    path = tmp_path / "d.npz"
    arrays = write_synthetic(path)
    train = load_dataset(cfg(path, val_size=5), "train")
    val = load_dataset(cfg(path, val_size=5), "val")
    test = load_dataset(cfg(path, val_size=5), "test")

    assert (len(train), len(val), len(test)) == (15, 5, 10)
    assert train.images.dtype == np.float32 and train.images.shape == (15, 1, 4, 4)
    assert train.labels.dtype == np.int64
    assert train.source == "npz" and train.path == path.resolve() and train.synthetic
    assert train.label_names == ["minus", "plus"]
    assert train.meta["model"]["depth"] == 2
    assert set(train.model_arrays) == {"model_patches_1"}
    # val is the LAST rows of the training set; latents are sliced with the images
    np.testing.assert_array_equal(val.images, arrays["x_train"][15:])
    assert set(val.latents) == {"latent_0", "patch_1"}
    np.testing.assert_array_equal(val.latents["latent_0"][:, 0], np.arange(15, 20))
    np.testing.assert_array_equal(train.latents["patch_1"][:, 0], np.arange(15))
    np.testing.assert_array_equal(test.latents["latent_0"][:, 0], np.arange(10))
    assert set(test.latents) == {"latent_0"}


@pytest.mark.parametrize(
    ("val_size", "limit", "sizes"),
    [("auto", None, (18, 2)), (0.25, None, (15, 5)), (3, None, (17, 3)), (3, 4, (4, 3)), (0, None, (20, None))],
)
def test_val_size_and_limit(tmp_path, val_size, limit, sizes):
    path = tmp_path / "d.npz"
    write_synthetic(path)
    c = cfg(path, val_size=val_size, limit=limit)
    assert len(load_dataset(c, "train")) == sizes[0]
    if sizes[1] is None:
        with pytest.raises(DataError, match="no validation split"):
            load_dataset(c, "val")
    else:
        assert len(load_dataset(c, "val")) == sizes[1]


@pytest.mark.parametrize(
    ("val_size", "message"),
    [
        (20, "data.val_size 20 gives 20 validation images, but there are only 20 training images"),
        (1.5, "data.val_size 1.5: expected a count"),
        (-1, "data.val_size must not be negative"),
    ],
)
def test_bad_val_size(tmp_path, val_size, message):
    path = tmp_path / "d.npz"
    write_synthetic(path)
    with pytest.raises(DataError, match=message):
        load_dataset(cfg(path, val_size=val_size), "train")


def test_foreign_npz_gets_channel_axis(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=np.zeros((10, 6, 6), np.uint8),
        y_train=np.arange(10),
        x_test=np.zeros((4, 6, 6), np.uint8),
        y_test=np.arange(4),
    )
    train = load_dataset(cfg(path, val_size=0), "train")
    assert train.images.shape == (10, 1, 6, 6) and train.images.dtype == np.uint8
    assert train.meta == {} and not train.synthetic and train.latents == {} and train.model_arrays == {}
    assert train.label_names == [str(i) for i in range(10)]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.full((3, 1, 2, 2), np.nan, np.float32), "y_train": np.zeros(3, int)}, "'x_train' contains NaN"),
        ({"x_train": np.zeros((3, 1, 1, 2, 2)), "y_train": np.zeros(3, int)}, r"'x_train' has shape \(3, 1, 1, 2, 2\)"),
        ({"x_train": np.zeros((3, 1, 2, 2)), "y_train": np.zeros(3)}, "'y_train' must be a vector of integer labels"),
        ({"x_train": np.zeros((3, 1, 2, 2)), "y_train": np.zeros(2, int)}, "'y_train' has 2 labels but 'x_train' has 3"),
        ({"x_train": np.zeros((0, 1, 2, 2)), "y_train": np.zeros(0, int)}, "'x_train' holds no images"),
        ({"x_train": np.zeros((3, 1, 2, 2)), "y_train": -np.ones(3, int)}, r"labels must lie in 0\.\."),
        ({"y_train": np.zeros(3, int)}, "no array 'x_train'"),
    ],
)
def test_bad_npz(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(cfg(path, val_size=0), "train")


def test_npz_without_test_split_and_object_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((3, 1, 2, 2)), y_train=np.zeros(3, int))
    with pytest.raises(DataError, match="no array 'x_test'"):
        load_dataset(cfg(path), "test")
    evil = tmp_path / "obj.npz"
    np.savez(evil, x_train=np.array([object()] * 3, dtype=object), y_train=np.zeros(3, int))
    with pytest.raises(DataError, match="'x_train' holds object arrays"):
        load_dataset(cfg(evil), "train")


# --------------------------------------------------------------------------- CIFAR-10


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), protocol 2:
    what the official CIFAR-10 files contain (checked with pickletools)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2(obj, path: Path) -> None:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def fake_batch(first: int, n: int, bytes_keys: bool) -> dict:
    """n images whose pixels all equal their global row index (mod 256)."""
    rows = np.arange(first, first + n)
    d = {
        "data": np.repeat((rows % 256).astype(np.uint8)[:, None], 3072, axis=1),
        "labels": [int(v) for v in rows % 10],  # plain ints, as in the real files
        "batch_label": "fake",
    }
    return {k.encode(): v for k, v in d.items()} if bytes_keys else d


def make_cifar(root: Path, n=6, bytes_keys=True, test=False) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(5):
        dump_py2(fake_batch(i * n, n, bytes_keys), folder / f"data_batch_{i + 1}")
    names = [f"class{i}".encode() if bytes_keys else f"class{i}" for i in range(10)]
    dump_py2({b"label_names" if bytes_keys else "label_names": names}, folder / "batches.meta")
    if test:
        dump_py2(fake_batch(1000, n, bytes_keys), folder / "test_batch")
    return folder


@pytest.mark.parametrize("bytes_keys", [True, False], ids=["bytes-keys", "str-keys"])
def test_cifar_fake_batches(tmp_path, bytes_keys):
    folder = make_cifar(tmp_path, n=6, bytes_keys=bytes_keys)
    c = cfg(tmp_path, val_size=6)  # one batch, like the paper's 10,000 of 50,000
    train, val = load_dataset(c, "train"), load_dataset(c, "val")
    assert train.source == "cifar10" and train.path == folder.resolve()
    assert train.images.shape == (24, 3, 32, 32) and train.images.dtype == np.uint8
    assert train.label_names == [f"class{i}" for i in range(10)]
    # data_batch_1..5 in order; val = the last rows = data_batch_5
    np.testing.assert_array_equal(train.images[:, 0, 0, 0], np.arange(24))
    np.testing.assert_array_equal(val.images[:, 2, 31, 31], np.arange(24, 30))
    np.testing.assert_array_equal(train.labels, np.arange(24) % 10)
    assert train.meta == {} and train.latents == {} and not train.synthetic


def test_cifar_rgb_layout(tmp_path):
    folder = make_cifar(tmp_path, n=1)
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.arange(1024) % 256]).astype(np.uint8)
    dump_py2({b"data": row[None], b"labels": [3]}, folder / "data_batch_1")
    img = load_dataset(cfg(folder, val_size=0), "train").images[0]  # (3, 32, 32)
    assert img[0].min() == img[0].max() == 10 and img[1].max() == 20
    assert img[2, 0, 5] == 5 and img[2, 1, 0] == 32  # row-major 32x32 per channel


def test_cifar_auto_val_is_10000(tmp_path):
    make_cifar(tmp_path, n=6)
    with pytest.raises(DataError, match="gives 10000 validation images, but there are only 30"):
        load_dataset(cfg(tmp_path), "train")


def test_cifar_data_may_name_the_folder_or_its_parent(tmp_path):
    folder = make_cifar(tmp_path)
    a = load_dataset(cfg(tmp_path, val_size=6), "train")
    b = load_dataset(cfg(folder, val_size=6), "train")
    assert a.path == b.path == folder.resolve()
    np.testing.assert_array_equal(a.images, b.images)


def test_cifar_test_batch(tmp_path):
    folder = make_cifar(tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset(cfg(tmp_path), "test")
    assert str(e.value) == (
        f"{folder.resolve() / 'test_batch'}: missing, so there is no test split; "
        "evaluate on --split val (the last 10,000 training images)"
    )
    dump_py2(fake_batch(1000, 4, True), folder / "test_batch")
    test = load_dataset(cfg(tmp_path), "test")
    assert len(test) == 4 and test.split == "test"


def test_cifar_missing_and_corrupt_batches(tmp_path):
    folder = make_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        load_dataset(cfg(tmp_path), "train")
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(fake_batch(0, 6, True))
    (folder / "data_batch_3").write_bytes(buf.getvalue()[:5000])  # truncated
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR-10 pickle"):
        load_dataset(cfg(tmp_path), "train")
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR-10 pickle"):
        load_dataset(cfg(tmp_path), "train")
    dump_py2({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, folder / "data_batch_3")
    with pytest.raises(DataError, match=r"'data' must be a uint8 array of shape \(n, 3072\)"):
        load_dataset(cfg(tmp_path), "train")


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, how):
    folder = make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    if how == "os.system":
        payload = _RunsCode(os.system, f"touch {marker}")
    else:
        payload = _RunsCode(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()")
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": payload, "labels": [0]}, f, protocol=2)
    # the payload really works when unpickled without restriction...
    pickle.loads(pickle.dumps(payload, protocol=2))
    assert marker.exists()
    marker.unlink()
    # ...but hgm refuses it before calling anything
    with pytest.raises(DataError) as e:
        load_dataset(cfg(tmp_path), "train")
    # protocol 2 writes Python 2 module names: builtins.eval is stored as __builtin__.eval
    target = f"{os.system.__module__}.system" if how == "os.system" else "__builtin__.eval"
    assert str(e.value) == (
        f"{folder.resolve() / 'data_batch_1'}: refused to unpickle {target} "
        "(CIFAR-10 pickles contain only numpy arrays)"
    )
    assert not marker.exists()


def test_download_called_with_official_archive(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, **kw):
        calls.append((url, download_root, kw))
        make_cifar(Path(download_root), n=3)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    root = tmp_path / "new"
    with pytest.raises(DataError, match=f"data not found: {root}"):
        load_dataset(cfg(root, val_size=3), "train")
    assert calls == []
    train = load_dataset(cfg(root, val_size=3, download=True), "train")
    assert len(train) == 12 and train.source == "cifar10"
    assert calls == [(data.CIFAR_URL, str(root.resolve()), {"filename": data.CIFAR_ARCHIVE, "md5": data.CIFAR_MD5})]
    load_dataset(cfg(root, val_size=3, download=True), "val")  # present now: no second download
    assert len(calls) == 1


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*a, **kw):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10 from .*: Network is unreachable"):
        load_dataset(cfg(tmp_path / "x", download=True), "train")


def cifar_batches() -> Path:
    root = Path(os.environ.get("HGM_CIFAR") or REPO.parent / "shared" / "data")
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / "data_batch_5").exists():
            return folder
    pytest.skip(f"CIFAR-10 batches not found at {root}: set HGM_CIFAR")


@pytest.mark.cifar
def test_real_cifar_batches():
    folder = cifar_batches()
    c = cfg(folder)
    train, val = load_dataset(c, "train"), load_dataset(c, "val")
    assert train.images.shape == (40_000, 3, 32, 32) and train.images.dtype == np.uint8
    assert len(val) == 10_000 and train.label_names[0] == "airplane"
    batch5 = data._unpickle(folder / "data_batch_5")
    np.testing.assert_array_equal(val.images.reshape(10_000, 3072), batch5["data"])
    np.testing.assert_array_equal(val.labels, batch5["labels"])
    if not (folder / "test_batch").exists():
        with pytest.raises(DataError, match="test_batch: missing.*--split val"):
            load_dataset(c, "test")


# --------------------------------------------------------------------------- image folders


def write_png(path: Path, value: int, size=(8, 6), mode="RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 0)).save(path)


def make_folder(root: Path, per_class=5) -> None:
    for c, name in enumerate(["cat", "dog"]):
        for i in range(per_class):
            write_png(root / name / f"{i}.png", 10 * c + i)


def test_image_folder(tmp_path):
    make_folder(tmp_path)
    write_png(tmp_path / "dog" / "gray.png", 99, mode="L")  # grayscale becomes 3 equal channels
    write_png(tmp_path / "cat" / "z.bmp", 5)  # not decoded by torchvision.io: read through PIL
    c = cfg(tmp_path, val_size=3)
    train, val = load_dataset(c, "train", seed=1), load_dataset(c, "val", seed=1)
    assert train.source == "imagefolder" and train.label_names == ["cat", "dog"]
    assert train.images.shape == (9, 3, 6, 8) and train.images.dtype == np.uint8  # (N, 3, H, W)
    assert len(val) == 3
    everything = np.concatenate([train.images, val.images])
    assert sorted(everything[:, 0, 0, 0]) == sorted([0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 99])
    assert sorted(everything[:, 1, 0, 0]) == sorted([0, 0, 1, 1, 2, 2, 5, 5, 6, 6, 7, 99])  # G = R // 2
    labels = np.concatenate([train.labels, val.labels])
    assert all(lab == (v >= 10) for lab, v in zip(labels, everything[:, 0, 0, 0]))  # pixels match labels
    gray = everything[everything[:, 0, 0, 0] == 99][0]
    assert (gray == 99).all()
    # the order is a seeded permutation: same seed, same split
    np.testing.assert_array_equal(load_dataset(c, "val", seed=1).images, val.images)
    with pytest.raises(DataError, match="has no test split; use --split val"):
        load_dataset(c, "test")


def test_image_folder_train_test_layout(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "test", per_class=2)
    test = load_dataset(cfg(tmp_path), "test")
    assert len(test) == 4 and list(test.labels) == [0, 0, 1, 1]
    assert len(load_dataset(cfg(tmp_path, val_size=0, limit=3), "train")) == 3


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a dataset: no class folders"):
        load_dataset(cfg(tmp_path), "train")
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match=r"no images in class folder\(s\) cat \(image extensions: .jpg"):
        load_dataset(cfg(tmp_path), "train")
    make_folder(tmp_path)
    write_png(tmp_path / "dog" / "big.png", 1, size=(16, 16))
    with pytest.raises(DataError, match=r"big.png: image is 16x16, but .* is 8x6; all images must have the same size"):
        load_dataset(cfg(tmp_path), "train")
    (tmp_path / "dog" / "big.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="big.png: not a readable image"):
        load_dataset(cfg(tmp_path), "train")


# --------------------------------------------------------------------------- root, splits, batches


def test_resolve_root(tmp_path, monkeypatch):
    monkeypatch.delenv("HGM_DATA", raising=False)
    with pytest.raises(DataError, match="^no data given: pass --data or set HGM_DATA$"):
        resolve_root(None)
    monkeypatch.setenv("HGM_DATA", str(tmp_path))
    assert resolve_root(None) == tmp_path.resolve()
    with pytest.raises(DataError, match=f"^data not found: {tmp_path / 'nope'}$"):
        resolve_root(str(tmp_path / "nope"))
    (tmp_path / "a.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="not a dataset .*extract archives first"):
        load_dataset(cfg(tmp_path / "a.tar.gz"))
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_dataset(cfg(tmp_path), "dev")


def test_iter_batches_are_views():
    x = np.arange(10 * 2).reshape(10, 2)
    got = list(iter_batches(x, 4))
    assert [s for s, _ in got] == [0, 4, 8] and [len(b) for _, b in got] == [4, 4, 2]
    assert all(np.shares_memory(b, x) for _, b in got)


# --------------------------------------------------------------------------- normalization


def uint8_dataset(n=64) -> Dataset:
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(0, 50, (n, 5, 5)), rng.integers(100, 256, (n, 5, 5)), np.full((n, 5, 5), 7)], 1)
    return Dataset(images.astype(np.uint8), np.zeros(n, np.int64), ["a"], "npz", "train", Path("x"), {}, {}, {})


def test_normalization_standardize():
    train = uint8_dataset()
    norm = normalization(DataConfig(normalize="standardize"), train)
    assert norm["mode"] == "standardize" and norm["scale"] == pytest.approx(1 / 255)
    assert norm["std"][2] == 1.0  # a constant channel is not divided by zero
    mean, std = np.array(norm["mean"]), np.array(norm["std"])
    x = (train.images * norm["scale"] - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(x[:, :2].mean(axis=(0, 2, 3)), 0, atol=1e-9)
    np.testing.assert_allclose(x[:, :2].std(axis=(0, 2, 3)), 1, atol=1e-9)
    np.testing.assert_allclose(x[:, 2], 0, atol=1e-9)
    assert all(type(v) is float for v in norm["mean"] + norm["std"])  # JSON-able


def test_normalization_none_and_scale():
    train = uint8_dataset()
    assert normalization(DataConfig(normalize="none"), train) == {
        "mode": "none", "scale": 1.0, "mean": [0.0] * 3, "std": [1.0] * 3,
    }
    assert normalization(DataConfig(normalize="scale"), train)["scale"] == pytest.approx(1 / 255)
    floats = Dataset(train.images.astype(np.float32), train.labels, ["a"], "npz", "train", Path("x"), {}, {}, {})
    assert normalization(DataConfig(normalize="scale"), floats)["scale"] == 1.0
