"""The IDX file format of MNIST and Fashion-MNIST, gzipped or not, read strictly.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (TT the element type, NN the number
of dimensions), NN big-endian uint32 sizes, then the elements in C order, big-endian.
Images are ``00 00 08 03`` (uint8, N x rows x cols), labels ``00 00 08 01`` (uint8, N).
A file whose length does not match its header is an error, never a shorter dataset.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from pathlib import Path

import numpy as np

from ..errors import AlexNetError

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when it is gzip (by its magic, not its name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AlexNetError(f"cannot read {path}: {e.strerror or e}") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise AlexNetError(f"{path} is a corrupt or truncated gzip file ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into a native-endian numpy array, checking the header against the size."""
    path = Path(path)
    raw = read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise AlexNetError(f"{path} is not an IDX file (magic number 0x{raw[:4].hex() or 'empty'})")
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise AlexNetError(f"{path} is truncated: its header needs {header} bytes, the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + prod(dims) * dtype.itemsize
    if len(raw) != expected:
        shape = " x ".join(map(str, dims))
        problem = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise AlexNetError(
            f"{path} {problem}: its header says {shape} ({expected} bytes), the file has {len(raw)} bytes"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)

