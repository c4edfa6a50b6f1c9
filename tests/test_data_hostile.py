"""Hostile and broken datasets through the command line (issue 14 groups 6, 7,
10, 12; issue 15 part 3): every one ends in exactly one ``Error:`` line and
exit 1, with no traceback, no hang, and the ``--out`` that was already there
left byte for byte as it was, with nothing beside it.

Also Fashion-MNIST / MNIST from IDX files: detection, splits, header checks,
and the real training split in ../shared/data when it is there."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hgmcli import data
from hgmcli.cli import app
from hgmcli.config import DataConfig
from hgmcli.data import load_dataset
from hgmcli.errors import DataError

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
GOOD = b"a finished artifact from an earlier run"


@pytest.fixture(autouse=True)
def _fresh_cache_and_no_hang():
    """A reader that blocks (a FIFO, /dev/zero) fails the test instead of hanging it."""

    def hung(*_):
        raise TimeoutError("the reader hung")

    data.clear_cache()
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(300)  # generous: importing torchvision alone took 30 s on the loaded 2-core box
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
    data.clear_cache()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(r, message: str, out_dir: Path) -> None:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no exception escaped the CLI
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr, r.stderr
    assert [p.name for p in out_dir.iterdir()] == ["c.npz"]  # nothing partial beside it
    assert (out_dir / "c.npz").read_bytes() == GOOD  # the earlier output is intact


def cluster_fails(tmp_path: Path, data_path: Path, message: str, *extra) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "c.npz").write_bytes(GOOD)
    r = run("cluster", "--data", data_path, "--out", out_dir / "c.npz", "--patches", 20, "--k", 2,
            "--patch-size", 2, "--stride", 2, "--val-size", 0, *extra)
    assert_one_line_error(r, message, out_dir)


# --------------------------------------------------------------------------- builders


def write_png(path: Path, value: int, size=(8, 6)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def image_folder(root: Path, classes=("cat", "dog"), per_class=3) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_png(root / name / f"{i}.png", 10 * c + i)
    return root


def save_npz(path: Path, x, y=None) -> Path:
    y = np.arange(len(x)) % 2 if y is None else y
    np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    return path


def npy_header(shape, dtype="|u1") -> bytes:
    """A version 1.0 .npy header, as np.save writes it (padded to 64 bytes)."""
    d = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    pad = 64 - (10 + len(d) + 1) % 64
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d) + pad + 1) + d.encode() + b" " * pad + b"\n"


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080<ndim>, big-endian dims, data."""
    magic = 0x800 + array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, n=40, test: int = 0, gz=False, size=(28, 28)) -> tuple[np.ndarray, np.ndarray]:
    """train (and t10k when test > 0) files; pixel [0, 0] of image i is i % 256, label i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
    made = None
    for prefix, count in (("train", n), ("t10k", test)):
        if count == 0:
            continue
        rng = np.random.default_rng(count)
        images = rng.integers(0, 256, (count, *size), dtype=np.uint8)
        images[:, 0, 0] = np.arange(count) % 256
        labels = (np.arange(count) % 10).astype(np.uint8)
        write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
        write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
        made = made or (images, labels)
    return made


def patch_zip_sizes(path: Path, file_size: int) -> None:
    """Make the directory of a one-member zip claim ``file_size`` uncompressed bytes."""
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, raw.index(b"PK\x03\x04") + 22, file_size)  # local header
    struct.pack_into("<I", raw, raw.index(b"PK\x01\x02") + 24, file_size)  # central directory
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- image folders (group 6)


def make_loop(root: Path) -> Path:
    image_folder(root)
    (root / "cat" / "again").symlink_to("..")  # cat/again/cat/again/...
    return root


def make_alias(root: Path) -> Path:
    image_folder(root)
    (root / "dog" / "cats").symlink_to("../cat")  # cat's images under the label dog
    return root


def make_file_alias(root: Path) -> Path:
    image_folder(root)
    (root / "dog" / "puss.png").symlink_to("../cat/0.png")
    return root


def make_dev_zero(root: Path) -> Path:
    image_folder(root)
    (root / "cat" / "zz.png").symlink_to("/dev/zero")
    return root


def make_fifo(root: Path) -> Path:
    image_folder(root)
    os.mkfifo(root / "cat" / "zz.png")
    return root


def make_socket(root: Path) -> Path:
    image_folder(root)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "cat" / "zz.png"))
    s.close()
    return root


def make_device(root: Path) -> Path:
    image_folder(root)
    try:
        os.mknod(root / "cat" / "zz.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pytest.skip("mknod needs root")
    return root


def make_outside_link(root: Path) -> Path:
    image_folder(root)
    outside = image_folder(root.parent / "elsewhere", classes=("bird",))
    (root / "bird").symlink_to(outside / "bird")
    return root


def make_train_linked_outside(root: Path) -> Path:
    image_folder(root.parent / "elsewhere")
    root.mkdir()
    (root / "train").symlink_to(root.parent / "elsewhere")
    return root


def make_train_linked_to_root(root: Path) -> Path:
    image_folder(root)
    (root / "train").symlink_to(".")  # root/train/train/train/...
    return root


def make_dangling(root: Path) -> Path:
    image_folder(root)
    (root / "cat" / "gone.png").symlink_to("nowhere.png")
    return root


def make_self_link(root: Path) -> Path:
    image_folder(root)
    (root / "cat" / "me.png").symlink_to("me.png")  # ELOOP
    return root


def make_one_class(root: Path) -> Path:
    return image_folder(root, classes=("cat",))


IMAGE_FOLDER_CASES = {
    "symlink-loop": (make_loop, "the same folder as"),
    "class-linked-under-another": (make_alias, "the same folder as"),
    "file-under-two-classes": (make_file_alias, "under two classes"),
    "link-to-dev-zero": (make_dev_zero, "a symbolic link to /dev/zero, outside"),
    "fifo-named-png": (make_fifo, "zz.png: not a regular file but a FIFO"),
    "socket-named-png": (make_socket, "zz.png: not a regular file but a socket"),
    "device-named-png": (make_device, "zz.png: not a regular file but a character device"),
    "class-linked-outside": (make_outside_link, "outside"),
    "train-linked-outside": (make_train_linked_outside, "images/train: a symbolic link to"),
    "train-linked-to-root": (make_train_linked_to_root, "the same folder as"),
    "dangling-link": (make_dangling, "gone.png: cannot read: No such file or directory"),
    "link-to-itself": (make_self_link, "me.png: cannot read: Too many levels of symbolic links"),
    "one-class": (make_one_class, "the training split holds only class 'cat' (3 images); a classifier needs at least two"),
}


@pytest.mark.parametrize("case", IMAGE_FOLDER_CASES, ids=list(IMAGE_FOLDER_CASES))
def test_hostile_image_folders(tmp_path, case):
    make, message = IMAGE_FOLDER_CASES[case]
    root = make(tmp_path / "images")
    cluster_fails(tmp_path, root, message)


def test_image_larger_than_the_cap(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "images")
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 50)
    cluster_fails(tmp_path, root, "bytes, more than the 50 accepted for one image")


def test_links_inside_the_root_are_followed(tmp_path):
    """Links that stay inside --data and reach nothing twice are read as their targets."""
    root = tmp_path / "images"
    image_folder(root / "train")
    write_png(root / "pool" / "a.png", 77)
    write_png(root / "pool" / "deeper" / "b.png", 88)
    write_png(root / "c.png", 99)
    (root / "train" / "cat" / "more").symlink_to("../../pool")  # a folder outside train/, inside --data
    (root / "train" / "dog" / "c.png").symlink_to("../../c.png")
    ds = load_dataset(DataConfig(root=str(root), val_size=0), "train")
    assert ds.label_names == ["cat", "dog"] and len(ds) == 9
    assert sorted(ds.images[ds.labels == 0][:, 0, 0, 0]) == [0, 1, 2, 77, 88]
    assert sorted(ds.images[ds.labels == 1][:, 0, 0, 0]) == [10, 11, 12, 99]


@pytest.mark.parametrize("special", ["/dev/null", "fifo"])
def test_data_must_be_a_regular_file_or_a_folder(tmp_path, special):
    if special == "fifo":
        special = tmp_path / "d.npz"
        os.mkfifo(special)
    kind = "a character device" if special == "/dev/null" else "a FIFO"
    cluster_fails(tmp_path, special, f"not a regular file or a folder but {kind}; --data takes")


# --------------------------------------------------------------------------- .npz (groups 7, 12)


def npz_claiming_a_trillion_images(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", npy_header((10**12, 1, 28, 28)) + bytes(1000))
        z.writestr("y_train.npy", npy_header((10**12,), "<i8") + bytes(800))
    return path


def npz_with_a_forged_directory(path: Path) -> Path:
    """The zip directory agrees with the header (2**31 bytes) but the member holds 1,000."""
    n = 2**31 - 128
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", npy_header((n,)) + bytes(1000))
    patch_zip_sizes(path, n + 128)
    return path


def npz_random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    return path


def npz_that_is_npy(path: Path) -> Path:
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 1, 4, 4)))
    return path


def npz_truncated(path: Path) -> Path:
    save_npz(path, np.zeros((20, 1, 4, 4), np.float32))
    path.write_bytes(path.read_bytes()[:300])
    return path


def npz_with_a_text_member(path: Path) -> Path:
    save_npz(path, np.zeros((20, 1, 4, 4), np.float32))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("readme.txt", "hello")
    return path


def npz_bzip2(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as z:
        z.writestr("x_train.npy", npy_header((4, 4, 4)) + bytes(64))
    return path


def npz_of(x, y=None):
    return lambda path: save_npz(path, x, y)


NPZ_CASES = {
    "header-claims-1e12-images": (npz_claiming_a_trillion_images,
                                  "'x_train' claims shape (1000000000000, 1, 28, 28) of uint8 (784000000000000 bytes), "
                                  "but holds 1000 bytes: truncated or corrupt"),
    "forged-zip-directory": (npz_with_a_forged_directory, "'x_train' claims 2147483648 bytes but holds"),
    "random-bytes": (npz_random_bytes, "not a readable .npz (not a zip archive of .npy arrays: File is not a zip file)"),
    "npy-named-npz": (npz_that_is_npy, "not a readable .npz (not a zip archive"),
    "truncated": (npz_truncated, "not a readable .npz"),
    "non-array-member": (npz_with_a_text_member, "member 'readme.txt' is not a .npy array"),
    "bzip2-member": (npz_bzip2, "'x_train' is compressed with zip method 12"),
    "object-array": (npz_of(np.array([object()] * 20, dtype=object)), "'x_train' holds object arrays, which hgm refuses"),
    "channels-last-rgb": (npz_of(np.zeros((20, 32, 32, 3), np.uint8)),
                          "'x_train' has shape (20, 32, 32, 3), which looks channels-last (N, H, W, C); "
                          "hgm expects channels-first (N, C, H, W): save x.transpose(0, 3, 1, 2)"),
    "channels-last-grey": (npz_of(np.zeros((20, 28, 28, 1), np.float32)), "looks channels-last (N, H, W, C)"),
    "int16-beyond-255": (npz_of(np.full((20, 1, 4, 4), 4095, np.int16)),
                         "'x_train' has int16 pixels in 4095..4095; integer images must lie in 0..255 (uint8)"),
    "negative-ints": (npz_of(np.full((20, 1, 4, 4), -1, np.int64)), "integer images must lie in 0..255"),
    "huge-floats": (npz_of(np.full((20, 1, 4, 4), 1e9)), "'x_train' has pixels of magnitude 1e+09; images are expected within +-1e+06"),
    "float-nan": (npz_of(np.full((20, 1, 4, 4), np.nan, np.float32)), "'x_train' contains NaN or infinite values"),
    "bool-pixels": (npz_of(np.zeros((20, 1, 4, 4), bool)), "'x_train' has dtype bool; expected uint8 or floating-point pixels"),
    "complex-pixels": (npz_of(np.zeros((20, 1, 4, 4), complex)), "has dtype complex128; expected uint8"),
    "no-pixels": (npz_of(np.zeros((20, 1, 0, 4), np.float32)), "images without pixels"),
    "one-class": (npz_of(np.random.default_rng(0).random((20, 1, 4, 4)), np.zeros(20, int)),
                  "the training split holds only class '0' (20 images); a classifier needs at least two classes"),
}


@pytest.mark.parametrize("case", NPZ_CASES, ids=list(NPZ_CASES))
def test_hostile_npz(tmp_path, case):
    make, message = NPZ_CASES[case]
    cluster_fails(tmp_path, make(tmp_path / "d.npz"), message)


def test_npz_larger_than_memory(tmp_path, monkeypatch):
    import hgmcli.features

    path = save_npz(tmp_path / "d.npz", np.zeros((20, 1, 4, 4), np.float32))
    monkeypatch.setattr(hgmcli.features, "available_memory", lambda: 1000)
    cluster_fails(tmp_path, path, "its arrays need 0.0 GiB, but only 0.0 GiB of memory is available")


def test_plausible_npz_layouts_are_kept(tmp_path):
    """Small channel-first shapes that merely resemble channels-last are read as they are;
    integer pixels in 0..255 become uint8."""
    for shape in [(20, 5, 3, 3), (20, 10, 2, 2), (20, 3, 32, 32), (20, 1, 28, 28)]:
        path = save_npz(tmp_path / f"{shape[1]}-{shape[2]}.npz", np.zeros(shape, np.float32))
        assert load_dataset(DataConfig(root=str(path), val_size=0)).images.shape == shape
    path = save_npz(tmp_path / "ints.npz", np.full((20, 6, 6), 200, np.int64))
    ds = load_dataset(DataConfig(root=str(path), val_size=0))
    assert ds.images.dtype == np.uint8 and ds.images.shape == (20, 1, 6, 6) and ds.images.max() == 200


# --------------------------------------------------------------------------- IDX (issue 15, part 3)


def idx_folder(root: Path, **kw) -> Path:
    raw = root / "FashionMNIST" / "raw"
    write_idx(raw, **kw)
    return raw


def idx_replace(name: str, content):
    """A builder: a good raw folder whose file ``name`` is then replaced by ``content(old bytes)``."""

    def make(root: Path) -> Path:
        raw = idx_folder(root, gz=name.endswith(".gz"))
        (raw / name).write_bytes(content((raw / name).read_bytes()))
        return root

    return make


def idx_fifo(root: Path) -> Path:
    raw = idx_folder(root)
    (raw / "train-labels-idx1-ubyte").unlink()
    os.mkfifo(raw / "train-labels-idx1-ubyte")
    return root


def idx_without_labels(root: Path) -> Path:
    raw = idx_folder(root)
    (raw / "train-labels-idx1-ubyte").unlink()
    return root


IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
IDX_CASES = {
    "truncated-images": (idx_replace(IMAGES, lambda b: b[:-100]),
                         f"{IMAGES}: the IDX header claims (40, 28, 28) = 31360 bytes, but 31260 follow (truncated"),
    "trailing-bytes": (idx_replace(IMAGES, lambda b: b + b"x"), "claims (40, 28, 28) = 31360 bytes, but 31361 follow"),
    "truncated-gz": (idx_replace(IMAGES + ".gz", lambda b: b[: len(b) // 2]), f"{IMAGES}.gz: not a readable IDX file (EOFError"),
    "gz-stream-short": (idx_replace(IMAGES + ".gz", lambda b: gzip.compress(gzip.decompress(b)[:-100])),
                        "claims (40, 28, 28) = 31360 bytes, but only 31260 follow (truncated or corrupt)"),
    "gz-stream-long": (idx_replace(IMAGES + ".gz", lambda b: gzip.compress(gzip.decompress(b) + b"xx")),
                       "claims (40, 28, 28) = 31360 bytes, but more follow"),
    "not-gzip": (idx_replace(IMAGES + ".gz", lambda b: b"garbage" * 10), "not a readable IDX file (BadGzipFile"),
    "labels-as-images": (idx_replace(IMAGES, lambda b: idx_bytes(np.zeros(40, np.uint8))),
                         f"{IMAGES}: not an IDX file of images (magic 00000801, expected 00000803)"),
    "images-as-labels": (idx_replace(LABELS, lambda b: idx_bytes(np.zeros((40, 28, 28), np.uint8))),
                         f"{LABELS}: not an IDX file of labels (magic 00000803, expected 00000801)"),
    "int32-idx": (idx_replace(IMAGES, lambda b: struct.pack(">IIII", 0x0C03, 40, 28, 28) + bytes(40 * 28 * 28 * 4)),
                  "not an IDX file of images (magic 00000c03, expected 00000803)"),
    "empty-file": (idx_replace(LABELS, lambda b: b""), "not an IDX file of labels (magic missing, expected 00000801)"),
    "short-header": (idx_replace(IMAGES, lambda b: b[:10]), f"{IMAGES}: truncated IDX header"),
    "zero-images": (idx_replace(IMAGES, lambda b: struct.pack(">IIII", 0x803, 0, 28, 28)), "IDX dimensions (0, 28, 28) describe no data"),
    "gz-claims-too-much": (idx_replace(IMAGES + ".gz", lambda b: gzip.compress(struct.pack(">IIII", 0x803, 10**9, 28, 28))),
                           "the IDX header claims (1000000000, 28, 28) = 784000000000 bytes, more than a"),
    "label-count-mismatch": (idx_replace(LABELS, lambda b: idx_bytes(np.zeros(39, np.uint8))),
                             f"{LABELS}: 39 labels, but {IMAGES} holds 40 images"),
    "label-out-of-range": (idx_replace(LABELS, lambda b: idx_bytes(np.full(40, 10, np.uint8))), "labels must lie in 0..9; found 10..10"),
    "one-class": (idx_replace(LABELS, lambda b: idx_bytes(np.full(40, 3, np.uint8))),
                  "the training split holds only class 'Dress' (40 images)"),
    "fifo-labels": (idx_fifo, f"{LABELS}: not a regular file but a FIFO"),
    "missing-labels": (idx_without_labels, f"{LABELS}[.gz]: missing (FashionMNIST needs {IMAGES} and {LABELS} in"),
    "dataset-folder-without-raw": (lambda root: (root / "FashionMNIST").mkdir(parents=True) or root,
                                   f"{IMAGES}[.gz]: missing (FashionMNIST needs"),
}


@pytest.mark.parametrize("case", IDX_CASES, ids=list(IDX_CASES))
def test_hostile_idx(tmp_path, case):
    make, message = IDX_CASES[case]
    cluster_fails(tmp_path, make(tmp_path / "root"), message)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("where", ["root", "dataset-folder", "raw-folder"])
def test_idx_detected_like_cifar(tmp_path, gz, where):
    images, labels = write_idx(tmp_path / "FashionMNIST" / "raw", n=40, gz=gz)
    given = {"root": tmp_path, "dataset-folder": tmp_path / "FashionMNIST", "raw-folder": tmp_path / "FashionMNIST" / "raw"}
    c = DataConfig(root=str(given[where]), val_size=10)
    train, val = load_dataset(c, "train"), load_dataset(c, "val")
    assert train.source == "fashion-mnist" and train.path == (tmp_path / "FashionMNIST" / "raw").resolve()
    assert data.data_path(c) == train.path
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == np.uint8
    assert train.label_names[0] == "T-shirt/top" and train.label_names[9] == "Ankle boot"
    np.testing.assert_array_equal(np.concatenate([train.images, val.images])[:, 0], images)  # val: the last rows
    np.testing.assert_array_equal(val.labels, labels[30:])


def test_idx_val_is_the_last_10000(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", n=10_020, size=(4, 4))
    c = DataConfig(root=str(tmp_path))
    train, val = load_dataset(c, "train"), load_dataset(c, "val")
    assert train.source == "mnist" and train.label_names == [str(i) for i in range(10)]
    assert (len(train), len(val)) == (20, 10_000)
    np.testing.assert_array_equal(val.images[:, 0, 0, 0], np.arange(20, 10_020) % 256)


def test_idx_uncompressed_preferred_and_test_split(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, n=30, gz=True)
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(root=str(tmp_path), val_size=0), "test")
    assert str(e.value) == (
        f"{raw.resolve() / 't10k-images-idx3-ubyte'}[.gz]: missing, so there is no test split; "
        "evaluate on --split val (the last 10,000 training images)"
    )
    write_idx(raw, n=30, test=12)  # torchvision's layout after a download: .gz and extracted side by side
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not read")
    test = load_dataset(DataConfig(root=str(tmp_path), val_size=0), "test")
    assert len(test) == 12 and test.split == "test" and test.images.shape == (12, 1, 28, 28)
    assert len(load_dataset(DataConfig(root=str(tmp_path), val_size=0), "train")) == 30


def test_root_with_several_datasets(tmp_path):
    """CIFAR-10 first, then Fashion-MNIST, then MNIST; a dataset's folder picks it."""
    from tests.test_data import make_cifar

    write_idx(tmp_path / "MNIST" / "raw", n=20)
    assert load_dataset(DataConfig(root=str(tmp_path), val_size=0)).source == "mnist"
    write_idx(tmp_path / "FashionMNIST" / "raw", n=20)
    assert load_dataset(DataConfig(root=str(tmp_path), val_size=0)).source == "fashion-mnist"
    make_cifar(tmp_path)
    assert load_dataset(DataConfig(root=str(tmp_path), val_size=0)).source == "cifar10"
    assert load_dataset(DataConfig(root=str(tmp_path / "MNIST"), val_size=0)).source == "mnist"


def test_bare_idx_folder_is_named_by_its_folder(tmp_path):
    write_idx(tmp_path / "fashion-mnist", n=20)
    write_idx(tmp_path / "digits", n=20)
    assert load_dataset(DataConfig(root=str(tmp_path / "fashion-mnist"), val_size=0)).source == "fashion-mnist"
    assert load_dataset(DataConfig(root=str(tmp_path / "digits"), val_size=0)).source == "mnist"


def test_idx_end_to_end_and_test_split_through_the_cli(tmp_path):
    """fit-svm on raw pixels, then evaluate: --split test fails in one line without
    t10k-*, and works once the files are there."""
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw, n=60, gz=True)
    cls = tmp_path / "cls.pt"
    r = run("fit-svm", "--data", tmp_path, "--val-size", 10, "--out", cls)
    assert r.exit_code == 0, r.output
    r = run("evaluate", "--data", tmp_path, "--split", "test", "--val-size", 10, "--classifier", cls,
            "--out", tmp_path / "m.json")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"Error: {raw.resolve() / 't10k-images-idx3-ubyte'}[.gz]: missing, so there is no test split")
    assert not (tmp_path / "m.json").exists()
    write_idx(raw, n=60, test=20, gz=True)
    data.clear_cache()
    r = run("evaluate", "--data", tmp_path, "--split", "test", "--val-size", 10, "--classifier", cls,
            "--out", tmp_path / "m.json", "--json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.json").exists()


def shared_fashion_mnist() -> Path:
    raw = Path(os.environ.get("HGM_FASHION_MNIST") or REPO.parent / "shared" / "data" / "FashionMNIST")
    if not (raw / "raw" / "train-images-idx3-ubyte.gz").exists() and not (raw / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"Fashion-MNIST not found at {raw}/raw: set HGM_FASHION_MNIST to a FashionMNIST folder")
    return raw


def test_real_fashion_mnist():
    folder = shared_fashion_mnist()
    c = DataConfig(root=str(folder))
    train, val = load_dataset(c, "train"), load_dataset(c, "val")
    assert train.source == "fashion-mnist" and train.images.shape == (50_000, 1, 28, 28)
    assert len(val) == 10_000 and train.images.dtype == np.uint8
    assert np.bincount(np.concatenate([train.labels, val.labels])).tolist() == [6000] * 10  # the official split
    if not any((folder / "raw").glob("t10k-images-idx3-ubyte*")):
        with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\[\.gz\]: missing, so there is no test split"):
            load_dataset(c, "test")


def test_real_fashion_mnist_through_the_cli(tmp_path):
    folder = shared_fashion_mnist()
    r = run("cluster", "--data", folder, "--patches", 2000, "--k", 8, "--out", tmp_path / "c.npz", "--json")
    assert r.exit_code == 0, r.output
    c = np.load(tmp_path / "c.npz")["centroids"]
    assert c.shape == (8, 1, 3, 3)  # image defaults: 3x3 patches of 1 grey channel


def test_pipeline_refuses_special_data_before_making_its_run_folder(tmp_path):
    r = run("pipeline", "--config", REPO / "configs" / "cifar-cpu.yaml", "--data", "/dev/null", "--out", tmp_path / "run")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("Error: /dev/null: not a regular file or a folder but a character device")
    assert not (tmp_path / "run").exists()


def test_deeply_nested_image_folder_is_read(tmp_path):
    """Nesting deeper than Python's recursion limit: read, not a RecursionError."""
    root = image_folder(tmp_path / "images")
    deep = root / "cat"
    for _ in range(1100):  # one level at a time: mkdir(parents=True) itself recurses
        deep = deep / "d"
        deep.mkdir()
    write_png(deep / "x.png", 5)
    ds = load_dataset(DataConfig(root=str(root), val_size=0), "train")
    assert len(ds) == 7 and (ds.labels == 0).sum() == 4
    _remove_deep(root / "cat" / "d")


def _remove_deep(top: Path) -> None:
    """Delete a chain of single folders bottom-up without recursion (pytest's own cleanup
    and shutil.rmtree recurse once per level and would hit the recursion limit)."""
    chain = [top]
    while (nxt := chain[-1] / "d").is_dir():
        chain.append(nxt)
    for folder in reversed(chain):
        for f in folder.iterdir():
            if not f.is_dir():
                f.unlink()
        folder.rmdir()
