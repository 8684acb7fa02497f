"""Shared helpers for the golden-file generators (run with Debian's /usr/bin/python3, PyTorch 1.13).

COLA golden file format, container version 1 (read by test/golden/read.ts, no library needed):

    offset 0   8 bytes   magic, ASCII "COLAGLD1" (fixed; it names the file family, not the version)
    offset 8   u32 LE    H = length in bytes of the JSON header that follows (padding included)
    offset 12  H bytes   JSON header, UTF-8, right-padded with ASCII spaces so that the data section
                         starts at a multiple of 16 bytes
    12 + H     ...       data section: raw little-endian tensors, row-major (C order); each tensor
                         starts at a multiple of 16 bytes from the data start (zero-byte padding)

    header = {
      "version": 1,                      # container format version (bump FORMAT_VERSION on any
                                         # change to this layout; readers refuse other versions)
      "golden": "<name>",                # which golden this is, e.g. "stories260k_lora"
      "golden_version": <int>,           # version of that golden's contents/conventions; the
                                         # generator bumps it when tensors or conventions change,
                                         # and the TS test pins the version it was written for
      "generator": "scripts/goldens/<script>.py",
      "created_by_script": "scripts/goldens/<script>.py",
      "torch_version": "...", "numpy_version": "...", "python_version": "...",
      "conventions": {...},              # free-form text describing every convention
      "meta": {...},                     # scalars (e.g. f64 loss), sanity-check results
      "data_bytes": <int>,               # exact length of the data section (file ends there)
      "data_sha256": "<hex>",            # sha256 of the data section
      "tensors": [ {"name", "dtype": "f32"|"i32", "shape": [...], "offset", "nbytes"} ... ]
    }

`offset` is relative to the start of the data section; nbytes == 4 * prod(shape). A scalar is
stored with shape [1]. No timestamps are written, so re-running a generator gives identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
from typing import Any

import numpy as np
import torch

MAGIC = b"COLAGLD1"
FORMAT_VERSION = 1
ALIGN = 16

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def repo_rel(path: str) -> str:
    return os.path.relpath(os.path.abspath(path), REPO_ROOT)


def setup_determinism() -> None:
    """Single-threaded CPU math and deterministic algorithms: identical bytes on every run."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_numpy(value: Any, dtype: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if dtype == "f32":
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"f32 tensor from non-float array {arr.dtype}")
        out = arr.astype("<f4")
        if not np.all(np.isfinite(out)):
            raise ValueError("non-finite value in golden tensor")
    elif dtype == "i32":
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"i32 tensor from non-integer array {arr.dtype}")
        if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
            raise ValueError("i32 overflow")
        out = arr.astype("<i4")
    else:
        raise ValueError(f"dtype {dtype!r} not in f32|i32")
    if out.ndim == 0:
        out = out.reshape(1)
    return np.ascontiguousarray(out)


def write_golden(
    path: str,
    *,
    golden: str,
    golden_version: int,
    script: str,
    tensors: list[tuple[str, str, Any]],
    conventions: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """tensors: list of (name, dtype 'f32'|'i32', array-like), written in this order."""
    names = [t[0] for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    entries = []
    chunks: list[bytes] = []
    offset = 0
    for name, dtype, value in tensors:
        arr = _to_numpy(value, dtype)
        raw = arr.tobytes(order="C")
        pad = (-offset) % ALIGN
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        entries.append({"name": name, "dtype": dtype, "shape": [int(s) for s in arr.shape], "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    header = {
        "version": FORMAT_VERSION,
        "golden": golden,
        "golden_version": golden_version,
        "generator": repo_rel(script),
        "created_by_script": repo_rel(script),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "conventions": conventions,
        "meta": meta,
        "data_bytes": len(data),
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "tensors": entries,
    }
    hjson = json.dumps(header, indent=1, allow_nan=False, ensure_ascii=True).encode("utf-8")
    hlen = len(hjson) + ((-(len(MAGIC) + 4 + len(hjson))) % ALIGN)
    hjson = hjson + b" " * (hlen - len(hjson))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", hlen))
        f.write(hjson)
        f.write(data)
    size = os.path.getsize(path)
    if size >= 1 << 20:
        raise ValueError(f"{path} is {size} bytes; goldens must stay under 1 MB")
    print(f"wrote {repo_rel(path)}: {size} bytes, {len(entries)} tensors, sha256 {sha256_file(path)}")


def read_golden(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Python reader (used only to self-check what was written)."""
    with open(path, "rb") as f:
        b = f.read()
    if b[:8] != MAGIC:
        raise ValueError("bad magic")
    (hlen,) = struct.unpack("<I", b[8:12])
    header = json.loads(b[12 : 12 + hlen].decode("utf-8"))
    if header["version"] != FORMAT_VERSION:
        raise ValueError("bad version")
    data = b[12 + hlen :]
    if len(data) != header["data_bytes"] or hashlib.sha256(data).hexdigest() != header["data_sha256"]:
        raise ValueError("data section length/sha256 mismatch")
    out = {}
    for t in header["tensors"]:
        dt = "<f4" if t["dtype"] == "f32" else "<i4"
        out[t["name"]] = np.frombuffer(data, dtype=dt, count=t["nbytes"] // 4, offset=t["offset"]).reshape(t["shape"])
    return header, out


# ---------------------------------------------------------------- minimal safetensors writer

def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Minimal safetensors writer (format of huggingface/safetensors):
    u64 LE header length N, then N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
    "__metadata__": {...}} padded with spaces to a multiple of 8, then the raw little-endian data.
    Tensors are laid out contiguously in sorted-name order (deterministic); all F32 here."""
    names = sorted(tensors)
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    chunks = []
    off = 0
    for name in names:
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype != torch.float32:
            raise TypeError(f"{name}: only F32 is written here")
        raw = t.numpy().astype("<f4").tobytes(order="C")
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for c in chunks:
            f.write(c)
    print(f"wrote {repo_rel(path)}: {os.path.getsize(path)} bytes, {len(names)} tensors, sha256 {sha256_file(path)}")


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        b = f.read()
    (n,) = struct.unpack("<Q", b[:8])
    header = json.loads(b[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        arr = np.frombuffer(b[base + s : base + e], dtype="<f4").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"wrote {repo_rel(path)}: sha256 {sha256_file(path)}")


def f32_round(t: torch.Tensor) -> torch.Tensor:
    """Round to the nearest f32 and return as f64: what is stored is exactly what is computed with."""
    return t.to(torch.float32).to(torch.float64)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())
