"""Rademacher random projection whose every sign is a pure function of (seed, row, column).

The service must query a store on another device than the worker that built it, with any
batch size, so Π cannot come from a stateful RNG. Each group of 64 signs of a row is one
64-bit word, a splitmix64 hash of (seed, row, column // 64); sign (i, j) is bit j mod 64 of
word (i, j // 64): 1 → −1, 0 → +1. Integer arithmetic makes it identical on every device.
The ±1 matrix is left unscaled: every feature is L2-normalised afterwards, so the usual
1/√d factor would cancel.

Generating the signs costs about as much as the matrix product, so ``RademacherProjector``
keeps the generated blocks when the whole matrix fits its cache budget (a build projects
thousands of batches with the same Π) and regenerates them blockwise otherwise; Π is never
materialised whole beyond that budget.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _logical_shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x >>> bits`` on int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (multiplication wraps modulo 2^64)."""
    x = x ^ _logical_shift_right(x, 30)
    x = x * _MIX1
    x = x ^ _logical_shift_right(x, 27)
    x = x * _MIX2
    return x ^ _logical_shift_right(x, 31)


def sign_words(seed: int, rows: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """64-bit words of signs for every (row, word) pair: (len(rows), len(words)) int64."""
    seed_key = splitmix64(torch.tensor([seed], dtype=torch.int64, device=rows.device))
    row_key = splitmix64(rows.to(torch.int64) * _GOLDEN + seed_key)
    return splitmix64(row_key[:, None] + words.to(torch.int64)[None, :] * _GOLDEN)


def _byte_table(device: torch.device) -> torch.Tensor:
    """±1 for the 8 bits of every byte value, least significant bit first: (256, 8)."""
    values = torch.arange(256, device=device)[:, None]
    bits = (values >> torch.arange(8, device=device)[None, :]) & 1
    return 1.0 - 2.0 * bits.float()


def rademacher_block(
    seed: int, row_start: int, row_end: int, dim: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Rows [row_start, row_end) of Π as float32 ±1: (row_end − row_start, dim)."""
    device = torch.device(device)
    rows = torch.arange(row_start, row_end, device=device)
    n_words = (dim + 63) // 64
    words = sign_words(seed, rows, torch.arange(n_words, device=device))
    # byte k of a word holds its bits 8k..8k+7: one table lookup turns a byte into 8 signs
    as_bytes = _little_endian_bytes(words).reshape(len(rows), n_words * 8)
    signs = nn.functional.embedding(as_bytes.int(), _byte_table(device))
    return signs.reshape(len(rows), n_words * 64)[:, :dim].contiguous()


def _little_endian_bytes(words: torch.Tensor) -> torch.Tensor:
    if sys.byteorder == "little":  # CPUs and CUDA devices: reinterpret, no copy
        return words.contiguous().view(torch.uint8).reshape(*words.shape, 8)
    shifts = torch.arange(0, 64, 8, device=words.device)
    return ((words[..., None] >> shifts) & 0xFF).to(torch.uint8)


class RademacherProjector:
    """x ↦ x Π for Π ∈ {±1}^{in_dim × dim}, exact in fp32, generated blockwise by rows."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        seed: int,
        device: torch.device | str = "cpu",
        block_elements: int = 1 << 24,
        cache_bytes: int = 1 << 30,
    ):
        self.in_dim, self.dim, self.seed = in_dim, dim, seed
        self.device = torch.device(device)
        self.block_rows = max(1, min(in_dim, block_elements // dim))
        self._cache: list[torch.Tensor] | None = [] if in_dim * dim * 4 <= cache_bytes else None

    def _blocks(self):
        if self._cache:
            yield from zip(range(0, self.in_dim, self.block_rows), self._cache, strict=True)
            return
        for start in range(0, self.in_dim, self.block_rows):
            end = min(start + self.block_rows, self.in_dim)
            block = rademacher_block(self.seed, start, end, self.dim, self.device)
            if self._cache is not None:
                self._cache.append(block)
            yield start, block

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, dim), float32."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected vectors of {self.in_dim} values, got {x.shape[-1]}")
        x = x.to(self.device, torch.float32)
        out = torch.zeros(x.shape[0], self.dim, device=self.device)
        for start, block in self._blocks():
            out.addmm_(x[:, start : start + block.shape[0]], block)
        return out


class DenseReferenceProjector:
    """The whole Π built the obvious way, one sign at a time from its bit (tests only)."""

    def __init__(self, in_dim: int, dim: int, seed: int):
        rows = torch.arange(in_dim)
        columns = torch.arange(dim)
        words = sign_words(seed, rows, columns // 64)  # (in_dim, dim): each column's word
        bits = (words >> (columns % 64)[None, :]) & 1
        self.matrix = 1.0 - 2.0 * bits.double()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ self.matrix).float()
