"""Tensors to and from files in the safetensors layout, with no pickle anywhere.

The layout (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length, a JSON header mapping each name to its dtype, shape and byte range,
then the raw bytes. Reading it can only ever produce tensors, so a crafted cache
file cannot run code, which ``torch.load`` of a pickle can (``weights_only``
narrows that, it does not remove it). Written here in a few lines rather than
adding a dependency; checked against the ``safetensors`` package (0.8.0):
each reads the other's files.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
#: A header larger than this is not one of ours (a model's header is a few kB): refuse before reading it.
MAX_HEADER = 100 << 20


def save_tensors(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (any device; stored as contiguous CPU bytes) to ``path``."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for name, t in tensors.items():
        if t.dtype not in NAMES:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which this format does not store")
        data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)


def load_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_tensors`; anything malformed raises ValueError."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError("file too short for a tensor file")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > min(MAX_HEADER, len(raw) - 8):
        raise ValueError("not a tensor file (header length out of range)")
    try:
        header = json.loads(raw[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a tensor file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError("not a tensor file (header is not a JSON object)")
    body = memoryview(raw)[8 + size :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = DTYPES[info["dtype"]], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r}: malformed entry {info!r}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if not (0 <= start <= end <= len(body)) or end - start != nbytes or min(shape, default=0) < 0:
            raise ValueError(f"tensor {name!r}: byte range {start}..{end} does not fit shape {shape} of {dtype}")
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=torch.uint8) if nbytes else torch.empty(0,
                                                                                                          dtype=torch.uint8)
        out[name] = flat.view(dtype).reshape(shape)
    return out
