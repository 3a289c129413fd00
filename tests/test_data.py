"""ptk's data layer: importing real and official-format data, image-folder checks, the checked store, the CLI."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ptk
from .fixtures import require_cifar
from ptk import datastore, importers
from ptk.readers import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
from ptk.options import resolve_options
from ptk_plugins.image_datasets import Cifar10, FashionMnist, ImageFolder


PLUGINS = {p.name: p for p in (Cifar10(), FashionMnist(), ImageFolder())}


def load(dataset: str, data_dir, **options):
    """Load a data set through its plugin with typed options, as `ptk run` does."""
    plugin = PLUGINS[dataset]
    return plugin.load(data_dir, resolve_options(dataset, plugin.options, options))


# --------------------------------------------------------------------------- real CIFAR-10


@pytest.mark.cifar
@pytest.mark.slow
def test_real_cifar10_archive_imports_with_standard_classes_and_counts(cifar_data_dir):
    ds = load("cifar10", cifar_data_dir)
    assert ds.classes == CIFAR10_CLASSES
    assert ds.class_index("deer") == 4 and ds.class_index("dog") == 5
    assert tuple(ds.x_train.shape) == (50000, 3, 32, 32) and tuple(ds.x_test.shape) == (10000, 3, 32, 32)
    assert np.bincount(ds.y_train.numpy()).tolist() == [5000] * 10
    assert np.bincount(ds.y_test.numpy()).tolist() == [1000] * 10
    # the pixels are the archive's: the first deer of train/ is cifar10-jpeg/train/deer/0000.jpg, decoded
    with tarfile.open(require_cifar()) as tf:
        raw = tf.extractfile("cifar10-jpeg/train/deer/0000.jpg").read()
    expected = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).transpose(2, 0, 1)
    first_deer = int((ds.y_train == 4).nonzero()[0])
    assert np.array_equal(ds.x_train[first_deer].numpy(), expected)
    info = datastore.stored_datasets(cifar_data_dir).info("cifar10")
    assert info.source == str(require_cifar().resolve()) and len(info.classes) == 10


# --------------------------------------------------------------------------- official CIFAR-10 python format


class Py2Pickler(pickle._Pickler):
    """Pickles the way Python 2's cPickle wrote the official batches: every ``str`` and ``bytes`` as a
    BINSTRING (Python 3 would write text as BINUNICODE and bytes through ``_codecs.encode``), and numpy's
    array constructor under its numpy-1 module name ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_global(self, obj, name=None) -> None:
        if getattr(obj, "__module__", "") == "numpy._core.multiarray":
            self.write(pickle.GLOBAL + f"numpy.core.multiarray\n{obj.__name__}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_global


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def official_cifar_files(rng: np.random.Generator) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """A tiny data set in the official layout: Python-2-style pickles (protocol 2) of dicts with bytes keys,
    images as uint8 rows of 3072 values (R plane, G plane, B plane), labels as a list."""
    x = rng.integers(0, 256, (6 * 3 + 4, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, len(x)).tolist()
    files = {"batches.meta": py2_pickle({b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                         b"num_cases_per_batch": 3, b"num_vis": 3072})}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    sizes = [3, 3, 3, 3, 6, 4]
    start = 0
    for name, n in zip(names, sizes):
        rows = x[start:start + n].reshape(n, 3072)
        files[name] = py2_pickle({b"batch_label": name.encode(), b"labels": y[start:start + n], b"data": rows,
                                  b"filenames": [f"{i}.png".encode() for i in range(n)]})
        start += n
    return files, x, np.array(y)


def test_official_cifar_batches_folder_and_tarball_round_trip(ptk, tmp_path, monkeypatch):
    files, x, y = official_cifar_files(np.random.default_rng(0))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")

    for source in (folder, tarball):
        data_dir = tmp_path / f"data-{source.name}"
        monkeypatch.setenv("PTK_DATA_DIR", str(data_dir))
        res = ptk("data", "import", "cifar10", source)
        assert "18 train + 4 test images, 3x32x32" in res.output
        ds = load("cifar10", data_dir)
        assert np.array_equal(ds.x_train.numpy(), x[:18]) and np.array_equal(ds.x_test.numpy(), x[18:])
        assert ds.y_train.tolist() == y[:18].tolist() and ds.y_test.tolist() == y[18:].tolist()
        assert ds.classes == CIFAR10_CLASSES


def test_a_crafted_cifar_batch_cannot_run_code(ptk, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    files, _, _ = official_cifar_files(np.random.default_rng(1))
    files["data_batch_3"] = py2_pickle({b"data": Exploit(), b"labels": []})
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    res = ptk("data", "import", "cifar10", folder, expect=2)
    assert "data_batch_3 is not an official CIFAR-10 batch" in res.output and "it asks to load io.open" in res.output
    assert not marker.exists()
    assert datastore.stored_datasets(tmp_path / "data").info("cifar10") is None


# --------------------------------------------------------------------------- image folders


def write_image(path, size=(8, 8), color=(10, 20, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def image_folder(root, classes=("cat", "dog"), n_train=3, n_test=2):
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, c in enumerate(classes):
            for i in range(n):
                write_image(root / split / c / f"{i:03d}.png", color=(ci * 100, i * 10, 7))
    return root


def test_image_folder_decodes_in_class_order_and_is_cached_until_a_file_changes(tmp_path):
    folder = image_folder(tmp_path / "pets", classes=("dog", "cat", "bird"))
    write_image(folder / "train" / "cat" / "grey.png", mode="L", color=(99,))  # grey joins a colour set as RGB
    (folder / "test" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    data_dir = tmp_path / "data"
    ds = load("imagefolder", data_dir, path=str(folder))
    assert ds.classes == ["bird", "cat", "dog"]
    assert tuple(ds.x_train.shape) == (10, 3, 8, 8) and tuple(ds.x_test.shape) == (6, 3, 8, 8)
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert ds.x_train[6].tolist() == [[[99] * 8] * 8] * 3  # cat/grey.png sorts after cat/002.png
    assert ds.x_train[0, 0, 0, 0] == 200 and ds.x_train[3, 0, 0, 0] == 100  # bird = 3rd colour, cat = 2nd

    cache = datastore.imagefolder_cache(data_dir)
    assert len(cache.list()) == 1
    key = cache.list()[0].name
    assert load("imagefolder", data_dir, path=str(folder)).fingerprint() == ds.fingerprint()
    assert [i.name for i in cache.list()] == [key]  # served from the cache

    write_image(folder / "test" / "dog" / "001.png", color=(1, 2, 3))  # an edited image
    changed = load("imagefolder", data_dir, path=str(folder))
    assert changed.x_test[-1, :, 0, 0].tolist() == [1, 2, 3]
    assert len(cache.list()) == 1 and cache.list()[0].name != key  # the stale copy was dropped


def test_parallel_decoding_keeps_order_and_names_a_bad_file(tmp_path, monkeypatch):
    from ptk import readers
    from ptk.readers import decode

    folder = image_folder(tmp_path / "imgs", classes=("a", "b", "c"), n_train=4, n_test=2)
    serial = readers.read_image_folder(folder)
    monkeypatch.setattr(decode, "PARALLEL_FROM", 2)
    monkeypatch.setattr(decode, "CHUNK", 3)
    monkeypatch.setattr(decode, "decode_workers", lambda n: 2)
    parallel = readers.read_image_folder(folder)
    assert np.array_equal(serial.x_train, parallel.x_train) and np.array_equal(serial.y_test, parallel.y_test)
    (folder / "train" / "b" / "002.png").write_bytes(b"GIF89a broken")
    with pytest.raises(ptk.UsageError, match=f"cannot read image {folder}/train/b/002.png"):
        readers.read_image_folder(folder)


def test_image_folder_tarball_with_a_top_folder_imports_under_its_own_name(ptk, tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "pets")
    tarball = tmp_path / "pets.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(folder, arcname="pets")
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    res = ptk("data", "import", "pets", tarball)
    assert "6 train + 4 test images, 3x8x8" in res.output
    from_tar = load("imagefolder", tmp_path / "data", name="pets")
    from_dir = load("imagefolder", tmp_path / "data2", path=str(folder))
    assert from_tar.fingerprint() == from_dir.fingerprint()


@pytest.mark.parametrize("damage, message", [
    ("unreadable", "cannot read image {folder}/train/dog/001.png"),
    ("train_only", "'horse' only in train/"),
    ("mixed_sizes", "{folder}/train/cat/000.png is 16x12; {folder}/test/cat/000.png is 8x8"),
    ("no_test", "has no test/<class>/ folders"),
    ("empty_class", "class 'dog' has no images in test/"),
])
def test_bad_image_folders_fail_before_training_naming_the_problem(ptk, tmp_path, damage, message):
    folder = image_folder(tmp_path / "imgs")
    if damage == "unreadable":
        (folder / "train" / "dog" / "001.png").write_bytes(b"not a png")
    elif damage == "train_only":
        write_image(folder / "train" / "horse" / "000.png")
    elif damage == "mixed_sizes":
        for f in (folder / "train").rglob("*.png"):
            write_image(f, size=(16, 12))
    elif damage == "no_test":
        shutil.rmtree(folder / "test")
    elif damage == "empty_class":
        for f in (folder / "test" / "dog").glob("*.png"):
            f.unlink()
    res = ptk("run", "--dataset", "imagefolder", "-o", f"imagefolder.path={folder}", "--defense", "none",
              "--epochs", "1", "--out", tmp_path / "run", expect=2)
    assert message.format(folder=folder) in res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    assert not (tmp_path / "run" / "results.json").exists()


def test_imagefolder_needs_a_path_or_a_stored_name(ptk, tmp_path):
    res = ptk("run", "--dataset", "imagefolder", "--defense", "none", "--out", tmp_path / "r", expect=2)
    assert "-o imagefolder.path=FOLDER" in res.output and "-o imagefolder.name=NAME" in res.output
    res = ptk("run", "--dataset", "imagefolder", "-o", "imagefolder.name=nosuch", "--defense", "none",
              "--out", tmp_path / "r", expect=2)
    assert "no data set 'nosuch'" in res.output and "ptk data import nosuch PATH" in res.output


# --------------------------------------------------------------------------- the checked store


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_a_damaged_stored_data_set_is_detected_removed_and_never_loaded(ptk, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    ptk("data", "import", "tiny", image_folder(tmp_path / "imgs"))
    store = datastore.stored_datasets(tmp_path / "data")
    npz = store.npz("tiny")
    blob = bytearray(npz.read_bytes())
    if damage == "flip_byte":
        blob[len(blob) // 2] ^= 0xFF  # inside the pixel data: the zip still opens, only the checksum can tell
        npz.write_bytes(bytes(blob))
    else:
        npz.write_bytes(bytes(blob[: len(blob) // 3]))
    loaded = []
    monkeypatch.setattr(np, "load", lambda *a, **k: loaded.append(a) or pytest.fail("np.load ran"))
    res = ptk("run", "--dataset", "imagefolder", "-o", "imagefolder.name=tiny", "--defense", "none",
              "--out", tmp_path / "run", expect=2)
    assert res.output.count("\n") == 1
    assert "stored data set 'tiny'" in res.output and "removed it" in res.output
    assert "Import it again: ptk data import tiny PATH" in res.output
    assert ("sha256 does not match" if damage == "flip_byte" else "truncated") in res.output
    assert not npz.exists() and not store.sidecar("tiny").exists() and not loaded


def test_data_list_shows_stored_builtin_and_missing_sets(ptk, tmp_path, monkeypatch):
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(importers, "DEBIAN_FASHION_MNIST", [tmp_path / "nowhere"])
    ptk("data", "import", "pets", image_folder(tmp_path / "imgs", classes=("a", "b", "c")))
    out = ptk("data", "list").output
    assert f"data directory: {tmp_path / 'data'}" in out
    row = next(line for line in out.splitlines() if line.startswith("pets"))
    size = datastore.stored_datasets(tmp_path / "data").info("pets").bytes
    assert row.split()[:4] == ["pets", "9", "6", "3x8x8"] and "a, b, c (3)" in row and f"{size / 1000:.1f} kB" in row
    assert any(line.startswith("digits") and "built in" in line for line in out.splitlines())
    assert "cifar10          not imported: `ptk data import cifar10 PATH`" in out
    assert "fashion-mnist    not imported" in out


@pytest.mark.cifar
@pytest.mark.slow
def test_data_list_shows_imported_cifar10(ptk, cifar_data_dir):
    out = ptk("data", "list").output
    row = next(line for line in out.splitlines() if line.startswith("cifar10"))
    assert row.split()[:4] == ["cifar10", "50000", "10000", "3x32x32"] and "airplane" in row


# --------------------------------------------------------------------------- Fashion-MNIST (idx)


def idx_bytes(a: np.ndarray) -> bytes:
    return gzip.compress(struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes())


def test_fashion_mnist_idx_files_import_at_native_size(ptk, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x_tr, x_te = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y_tr, y_te = rng.integers(0, 10, 20).astype(np.uint8), rng.integers(0, 10, 5).astype(np.uint8)
    raw = tmp_path / "dl" / "FashionMNIST" / "raw"  # torchvision's layout, found from the root
    raw.mkdir(parents=True)
    for name, a in (("train-images-idx3-ubyte", x_tr), ("train-labels-idx1-ubyte", y_tr),
                    ("t10k-images-idx3-ubyte", x_te), ("t10k-labels-idx1-ubyte", y_te)):
        (raw / f"{name}.gz").write_bytes(idx_bytes(a))
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    ptk("data", "import", "fashion-mnist", tmp_path / "dl")
    ds = load("fashion-mnist", tmp_path / "data")
    assert ds.classes == FASHION_MNIST_CLASSES and tuple(ds.x_train.shape) == (20, 1, 28, 28)
    assert np.array_equal(ds.x_test[:, 0].numpy(), x_te) and ds.y_train.tolist() == y_tr.tolist()

    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(idx_bytes(x_te)[:-40])
    res = ptk("data", "import", "fashion-mnist", tmp_path / "dl", expect=2)
    assert "t10k-images-idx3-ubyte.gz is a damaged gzip file" in res.output


def test_debian_fashion_mnist_is_found_without_import(tmp_path):
    if importers.find_debian_fashion_mnist() is None:
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")
    ds = load("fashion-mnist", tmp_path / "empty")
    assert tuple(ds.x_train.shape) == (60000, 1, 28, 28) and tuple(ds.x_test.shape) == (10000, 1, 28, 28)
    assert np.bincount(ds.y_train.numpy()).tolist() == [6000] * 10


@pytest.mark.slow
def test_label_flip_on_real_fashion_mnist_through_the_cli(ptk, tmp_path):
    """The one-channel path end to end on Debian's original files: Shirt -> T-shirt/top, the data set's defaults."""
    if importers.find_debian_fashion_mnist() is None:
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")
    out = tmp_path / "run"
    ptk("run", "--dataset", "fashion-mnist", "--subset", "1000", "--test-subset", "500", "--epochs", "2",
        "--lr", "3e-3", "--batch-size", "64", "-o", "resnet18.width=8", "-o", "labelflip.budget=30",
        "--defense", "none", "--out", out)
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "complete" and r["data"]["name"] == "fashion-mnist"
    assert (r["target"]["source_class"], r["target"]["target_class"]) == ("Shirt", "T-shirt/top")
    assert len(r["attack"]["poison_indices"]) == 30
    clean = r["models"][0]
    assert clean["name"] == "clean" and clean["test_accuracy"] > 0.3  # chance is 0.1


@pytest.mark.parametrize("dataset, hint", [
    ("cifar10", "`ptk data import cifar10 PATH`"),
    ("fashion-mnist", "`apt-get install dataset-fashion-mnist`"),
])
def test_missing_data_names_where_it_looked_and_the_fix(ptk, tmp_path, monkeypatch, dataset, hint):
    monkeypatch.setattr(importers, "DEBIAN_FASHION_MNIST", [tmp_path / "nowhere"])
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    res = ptk("run", "--dataset", dataset, "--defense", "none", "--out", tmp_path / "r", expect=2)
    assert hint in res.output and f"ptk data download {dataset}" in res.output
    assert str(tmp_path / "data" / "datasets" / f"{dataset}.npz") in res.output


# --------------------------------------------------------------------------- download and usage errors


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_download_without_network_fails_in_one_line(ptk, tmp_path, monkeypatch, name):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # what torchvision's downloader calls
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    res = ptk("data", "download", name, expect=1)
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert error == [line for line in res.output.splitlines() if "Error" in line or "Traceback" in line]
    assert f"could not download {name} (no network in this test)" in error[0]
    assert f"ptk data import {name} PATH" in error[0]
    assert list((tmp_path / "data").iterdir()) == []  # the temporary download folder is gone


def test_download_imports_what_torchvision_fetched_and_cleans_up(ptk, tmp_path, monkeypatch):
    """The step after a successful download, with torchvision's network fetch replaced by local files."""
    import torchvision

    files, x, _ = official_cifar_files(np.random.default_rng(3))
    seen = []

    def fake_cifar10(root, train=True, download=False):
        assert download
        seen.append(Path(root))
        folder = Path(root) / "cifar-10-batches-py"  # where torchvision extracts the official tarball
        folder.mkdir(parents=True)
        for name, blob in files.items():
            (folder / name).write_bytes(blob)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    assert "18 train + 4 test images, 3x32x32" in ptk("data", "download", "cifar10").output
    assert np.array_equal(load("cifar10", tmp_path / "data").x_train.numpy(), x[:18])
    assert seen and seen[0].parent == tmp_path / "data" and not seen[0].exists()
    assert "downloaded with torchvision" in datastore.stored_datasets(tmp_path / "data").info("cifar10").source


def test_import_usage_errors(ptk, tmp_path, monkeypatch):
    monkeypatch.setenv("PTK_DATA_DIR", str(tmp_path / "data"))
    assert "does not exist" in ptk("data", "import", "cifar10", tmp_path / "nope", expect=2).output
    assert "must be 1-64 lower-case" in ptk("data", "import", "My Set", tmp_path, expect=2).output
    res = ptk("data", "import", "cifar10", image_folder(tmp_path / "pets"), expect=2)
    assert "is not CIFAR-10" in res.output and "ptk data import MYNAME" in res.output
    files, _, _ = official_cifar_files(np.random.default_rng(2))
    (tmp_path / "batches").mkdir()
    for n, blob in files.items():
        (tmp_path / "batches" / n).write_bytes(blob)
    res = ptk("data", "import", "cifar-10", tmp_path / "batches", expect=2)
    assert f"ptk data import cifar10 {tmp_path / 'batches'}" in res.output
