"""Compressed gradient features: 8-, 4-, 2- and 1-bit codes with a scale per row or per block.

A coded feature shard is one ``.npy`` of uint8, one stored row per example: first the
float32 steps Δ of its scale blocks (``dim / block`` of them, little-endian), then the packed
codes, ``bits`` per dimension, the first dimension in the lowest bits of a byte. Code k of a
dimension (an integer in [−2^(b−1), 2^(b−1) − 1], stored as k + 2^(b−1)) decodes to
(k + ½)·Δ of its block: a uniform mid-rise quantiser, so every one of the 2^b levels is used
and 1 bit is a sign.

- b ≥ 2: absmax scaling (as QLESS): Δ = 2·max|x| / 2^b over the block, k = ⌊x/Δ⌋ clipped,
  so |x − x̂| ≤ Δ/2 = max|x| / 2^b.
- b = 1: x̂ = sign(x)·mean|x| (Δ = 2·mean|x|), the L2-closest multiple of sign(x); an absmax
  step would make every row's norm follow its largest coordinate, not its length.

Rows are decoded a block of rows at a time into fp32 (``decode``), never the whole store:
``CodedRows`` wraps a memory-mapped shard as a read-only (rows, dim) float32 array-like, so
every reader of gradient features (``Datastore.rows``, ``feature_blocks``, the scanner) sees
floats and no selection method knows the store is coded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

CODE_BITS = {"int8": 8, "int4": 4, "int2": 2, "int1": 1}
STORE_DTYPES = ("float16", "float32", *CODE_BITS)


def is_code(dtype: str) -> bool:
    return dtype in CODE_BITS


def float_dtype(dtype: str) -> type[np.floating]:
    """The float type of arrays written beside the features (artifacts) for a store dtype:
    coded stores keep their other artifacts in fp16."""
    return np.float32 if dtype == "float32" else np.float16


@dataclass(frozen=True)
class FeatureCode:
    """How (rows, dim) float features become (rows, row_bytes) uint8 and back."""

    bits: int
    dim: int
    block: int  # dimensions sharing one scale (dim: one scale per row)

    def __post_init__(self) -> None:
        if self.bits not in (1, 2, 4, 8):
            raise ValueError(f"code bits must be 1, 2, 4 or 8, got {self.bits}")
        if self.block < 1 or self.dim % self.block:
            raise ValueError(f"scale block {self.block} must divide the dimension {self.dim}")
        if self.dim % 8:
            raise ValueError(f"a coded dimension must be a multiple of 8, got {self.dim}")

    @classmethod
    def of(cls, dtype: str, dim: int, block: int | None) -> FeatureCode:
        return cls(CODE_BITS[dtype], dim, block or dim)

    @property
    def blocks(self) -> int:
        return self.dim // self.block

    @property
    def per_byte(self) -> int:
        return 8 // self.bits

    @property
    def code_bytes(self) -> int:
        return -(-self.dim // self.per_byte)

    @property
    def row_bytes(self) -> int:
        return 4 * self.blocks + self.code_bytes

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, dim) floats → (n, row_bytes) uint8."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) features, got {x.shape}")
        n = x.shape[0]
        grouped = x.reshape(n, self.blocks, self.block)
        if self.bits == 1:
            step = 2 * np.abs(grouped).mean(axis=2)
        else:
            step = 2 * np.abs(grouped).max(axis=2) / (1 << self.bits)
        step = step.astype(np.float32)
        half = 1 << (self.bits - 1)
        safe = np.where(step > 0, step, 1.0)[:, :, None]
        codes = np.clip(np.floor(grouped / safe), -half, half - 1).astype(np.int64) + half
        codes = codes.reshape(n, self.dim)
        padded = np.zeros((n, self.code_bytes * self.per_byte), dtype=np.int64)
        padded[:, : self.dim] = codes
        shifts = self.bits * np.arange(self.per_byte)
        packed = (padded.reshape(n, self.code_bytes, self.per_byte) << shifts).sum(axis=2)
        out = np.empty((n, self.row_bytes), dtype=np.uint8)
        out[:, : 4 * self.blocks] = step.astype("<f4").view(np.uint8).reshape(n, -1)
        out[:, 4 * self.blocks :] = packed.astype(np.uint8)
        return out

    def decode(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(k, row_bytes) uint8 → (k, dim) float32 (into ``out`` when given)."""
        rows = np.asarray(rows)
        if out is None:
            out = np.empty((rows.shape[0], self.dim), dtype=np.float32)
        self.decode_tensor(_tensor(rows), torch.from_numpy(out))
        return out

    def decode_tensor(self, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """(k, row_bytes) uint8 → ``out`` (k, dim) float32: one plane of codes per bit field
        of the bytes, each written to its strided columns, then (u − 2^(b−1) + ½)·Δ."""
        self.unpack(rows, out)
        out.sub_(self.offset)
        out.view(rows.shape[0], self.blocks, self.block).mul_(self.steps(rows)[:, :, None])
        return out

    @property
    def offset(self) -> float:
        """u − offset = k + ½: what the stored unsigned code u is off by, in steps."""
        return (1 << (self.bits - 1)) - 0.5

    @cached_property
    def planar_order(self) -> torch.Tensor:
        """Column c of ``unpack_planar``'s output holds dimension planar_order[c]."""
        dims = torch.arange(self.dim).view(self.code_bytes, self.per_byte)
        return dims.t().reshape(-1)

    def unpack_planar(
        self, rows: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor
    ) -> torch.Tensor:
        """The unsigned codes u as float32 into ``out`` (k, dim), bit field by bit field:
        field j of every byte fills columns [j·bytes, (j+1)·bytes), contiguous writes with no
        interleaving (3.5× faster than ``unpack`` at 2 bits); ``planar_order`` maps columns
        to dimensions, so scores use queries permuted once. ``scratch``: (k, code_bytes)
        uint8."""
        codes = rows[:, 4 * self.blocks :]
        if self.bits == 8:
            return out.copy_(codes)
        width = self.code_bytes
        for j in range(self.per_byte):
            torch.bitwise_right_shift(codes, j * self.bits, out=scratch)
            scratch.bitwise_and_((1 << self.bits) - 1)
            out[:, j * width : (j + 1) * width].copy_(scratch)
        return out

    def unpack(self, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The unsigned codes u of (k, row_bytes) rows as float32 into ``out`` (k, dim)."""
        codes = rows[:, 4 * self.blocks :]
        if self.bits == 8:
            return out.copy_(codes)
        if self.bits == 1:  # numpy's bit unpacking is one pass
            bits = np.unpackbits(codes.numpy(), axis=1, bitorder="little")
            return out.copy_(torch.from_numpy(bits))
        mask = (1 << self.bits) - 1
        planes = [(codes >> (j * self.bits)) & mask for j in range(self.per_byte)]
        return out.copy_(torch.stack(planes, dim=2).view(rows.shape[0], self.dim))

    def steps(self, rows: torch.Tensor) -> torch.Tensor:
        """(k, blocks) float32: each row's scale steps Δ, read from its first bytes."""
        head = torch.empty((rows.shape[0], 4 * self.blocks), dtype=torch.uint8)
        return head.copy_(rows[:, : 4 * self.blocks]).view(torch.float32)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor view of a (read-only) memory map: only read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": never written
        return torch.from_numpy(array)


class CodedRows:
    """A coded shard read as a (rows, dim) float32 array: indexing decodes only those rows.

    Supports what readers of feature blocks do: ``len``, ``shape``, ``block[i]``,
    ``block[a:b]``, ``block[array_of_rows]``, ``np.asarray(block)``, ``block.astype(t)``.
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, raw: np.ndarray, code: FeatureCode):
        if raw.ndim != 2 or raw.shape[1] != code.row_bytes:
            raise ValueError(f"a coded shard has {code.row_bytes} bytes a row, got {raw.shape}")
        self.raw, self.code = raw, code

    @property
    def shape(self) -> tuple[int, int]:
        return (self.raw.shape[0], self.code.dim)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, *rest = key
            return self[rows][(slice(None), *rest)]
        if isinstance(key, int | np.integer):
            return self.code.decode(self.raw[key : key + 1])[0]
        return self.code.decode(self.raw[key])

    def decode_into(self, start: int, end: int, out: np.ndarray) -> np.ndarray:
        """Rows [start, end) decoded into ``out`` (a reused (end − start, dim) buffer)."""
        return self.code.decode(self.raw[start:end], out=out)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        decoded = self.code.decode(self.raw)
        return decoded if dtype is None else decoded.astype(dtype, copy=False)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=False)
