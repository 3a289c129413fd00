"""Decoding image files with Pillow, in parallel worker processes when there are many."""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..errors import UsageError
from ..progress import progress

#: Images per task sent to a decoding worker, and the fewest images worth starting workers for.
CHUNK, PARALLEL_FROM = 1000, 4000


def decode_image(data: bytes | memoryview, shown: str) -> np.ndarray:
    """H x W x C uint8: greyscale stays 1 channel, everything else becomes RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("RGB", "L"):
                im = im.convert("L") if im.mode in ("1", "LA", "I", "I;16", "F") else im.convert("RGB")
            arr = np.asarray(im)
    except UnidentifiedImageError:
        raise UsageError(f"cannot read image {shown}: not an image format Pillow knows; remove or replace "
                         f"that file") from None
    except Image.DecompressionBombError as exc:  # a tiny file that would decode to gigabytes
        raise UsageError(f"cannot read image {shown}: {str(exc).splitlines()[0]} (Pillow's decompression-bomb "
                         "guard); remove or replace that file") from None
    except (OSError, ValueError, SyntaxError) as exc:  # a known format, but damaged or truncated
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot read image {shown}: {reason}; remove or replace that file") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_workers(n_images: int) -> int:
    """Worker processes for decoding: one per usable core (at most 8); none for small folders, nor off
    Linux, where fork (which starts workers without re-importing torch) is unavailable or unsafe."""
    if n_images < PARALLEL_FROM or not sys.platform.startswith("linux"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def _decode_chunk(chunk: list[tuple[str, bytes]]) -> list[np.ndarray]:
    return [decode_image(data, shown) for shown, data in chunk]


def decode_many(items: list[tuple[str, bytes | memoryview]], desc: str) -> list[np.ndarray]:
    """Decode images in order, in parallel worker processes when there are many (Pillow's per-image
    cost is mostly Python, so threads would not help). The first unreadable image raises UsageError."""
    workers = decode_workers(len(items))
    if workers == 1:
        return [decode_image(data, shown) for shown, data in progress(items, desc, len(items))]
    chunks = [[(shown, bytes(data)) for shown, data in items[i:i + CHUNK]] for i in range(0, len(items), CHUNK)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        done = (a for chunk in pool.map(_decode_chunk, chunks) for a in chunk)
        return list(progress(done, desc, len(items)))
