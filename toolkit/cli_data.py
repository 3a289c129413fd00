"""``ptk data``: import, download and list the data sets in ptk's data directory.

Importing decodes a data set once (see :mod:`ptk.importers`) and stores it as
uint8 arrays (see :mod:`ptk.datastore`); every later ``ptk run`` loads those in
about a second instead of decoding 60,000 images again.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import click

from .paths import data_dir as resolve_data_dir

DOWNLOADS = {
    "cifar10": "the official cifar-10-python.tar.gz (about 170 MB) from www.cs.toronto.edu",
    "fashion-mnist": "the four official idx .gz files (31 MB) from Zalando's mirror",
}
DATA_DIR_OPTION = click.option("--data-dir", type=click.Path(path_type=Path),
                               help="ptk data directory (default $PTK_DATA_DIR, else the platform's user data dir)")


class DownloadFailed(click.ClickException):
    """A download that could not finish (no network, a server error, a bad checksum): exit code 1."""

    exit_code = 1


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def short_classes(classes: list[str], keep: int = 5) -> str:
    shown = ", ".join(classes[:keep]) + (", ..." if len(classes) > keep else "")
    return f"{shown} ({len(classes)})"


@click.group()
def data() -> None:
    """Import, download and list data sets in ptk's data directory."""


@data.command("import")
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@DATA_DIR_OPTION
def import_(name: str, path: Path, data_dir: Path | None) -> None:
    """Decode PATH and store it as data set NAME.

    \b
    NAME cifar10:       cifar-10-python.tar.gz, its cifar-10-batches-py/ folder,
                        or an image folder / .tar.gz with CIFAR-10's 10 classes
    NAME fashion-mnist: the folder holding the four *-idx?-ubyte.gz files
    any other NAME:     an image folder train/<class>/*, test/<class>/*, or a
                        .tar/.tar.gz of one; use it with
                        --dataset imagefolder -o imagefolder.name=NAME
    """
    from .importers import import_dataset

    root = resolve_data_dir(data_dir)
    start = time.perf_counter()
    info = import_dataset(root, name, path)
    c, h, w = info.image_shape
    click.echo(f"imported {name}: {info.train_size} train + {info.test_size} test images, {c}x{h}x{w}, "
               f"classes {short_classes(info.classes, 10)}")
    click.echo(f"stored {info.path} ({human_size(info.bytes)}) in {time.perf_counter() - start:.1f} s")


@data.command()
@click.argument("name", type=click.Choice(sorted(DOWNLOADS)))
@DATA_DIR_OPTION
def download(name: str, data_dir: Path | None) -> None:
    """Download NAME with torchvision (needs internet), then import it."""
    from .datastore import stored_datasets
    from .importers import read_dataset

    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    click.echo(f"downloading {DOWNLOADS[name]} ...", err=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
        folder = fetch(name, Path(tmp))
        info = stored_datasets(root).save(name, read_dataset(name, folder),
                                   source=f"downloaded with torchvision ({DOWNLOADS[name]})")
    c, h, w = info.image_shape
    click.echo(f"imported {name}: {info.train_size} train + {info.test_size} test images, {c}x{h}x{w} "
               f"-> {info.path} ({human_size(info.bytes)})")


def fetch(name: str, tmp: Path) -> Path:
    """Let torchvision download (and md5-check) the official files into ``tmp``; the folder holding them."""
    import torchvision

    try:
        if name == "cifar10":
            torchvision.datasets.CIFAR10(str(tmp), train=True, download=True)
            return tmp / "cifar-10-batches-py"
        torchvision.datasets.FashionMNIST(str(tmp), train=True, download=True)  # fetches all four files
        return tmp / "FashionMNIST" / "raw"
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision wraps md5 and mirror failures
        lines = [line.strip() for line in str(getattr(exc, "reason", None) or exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        reason = re.sub(r"^<urlopen error (.*)>$", r"\1", reason)  # torchvision's mirror loop keeps repr()s
        offline = ("copy cifar-10-python.tar.gz (or an image folder of CIFAR-10) to this machine and run "
                   "`ptk data import cifar10 PATH`" if name == "cifar10" else
                   "install Debian's dataset-fashion-mnist, or copy the four *-idx?-ubyte.gz files to this machine "
                   "and run `ptk data import fashion-mnist PATH`")
        raise DownloadFailed(f"could not download {name} ({reason}). Without internet access, {offline}") from None


@data.command("list")
@DATA_DIR_OPTION
def list_(data_dir: Path | None) -> None:
    """Show the stored data sets, the built-in ones, and what is missing."""
    from .datastore import imagefolder_cache, stored_datasets
    from .importers import find_debian_fashion_mnist
    from .readers import FASHION_MNIST_CLASSES

    root = resolve_data_dir(data_dir)
    click.echo(f"data directory: {root}")
    click.echo(f"{'NAME':16} {'TRAIN':>6} {'TEST':>6}  {'IMAGE':8} {'SIZE':>9}  CLASSES")
    stored = {i.name: i for i in stored_datasets(root).list()}
    for info in stored.values():
        c, h, w = info.image_shape
        click.echo(f"{info.name:16} {info.train_size:>6} {info.test_size:>6}  {f'{c}x{h}x{w}':8} "
                   f"{human_size(info.bytes):>9}  {short_classes(info.classes)}")
    click.echo(f"{'digits':16} {1347:>6} {450:>6}  {'3x32x32':8} {'built in':>9}  0, 1, 2, 3, 4, ... (10)"
               f"  [scikit-learn, no import needed]")
    debian = find_debian_fashion_mnist()
    if "fashion-mnist" not in stored and debian is not None:
        click.echo(f"{'fashion-mnist':16} {60000:>6} {10000:>6}  {'1x28x28':8} {'Debian':>9}  "
                   f"{short_classes(FASHION_MNIST_CLASSES)}  [{debian}, used automatically]")
    for name in ("cifar10", "fashion-mnist"):
        if name not in stored and not (name == "fashion-mnist" and debian is not None):
            click.echo(f"{name:16} not imported: `ptk data import {name} PATH` or `ptk data download {name}`")
    cached = imagefolder_cache(root).list()
    if cached:
        total = sum(i.bytes for i in cached)
        click.echo(f"imagefolder cache: {len(cached)} decoded folder(s), {human_size(total)} in "
                   f"{imagefolder_cache(root).root}")
