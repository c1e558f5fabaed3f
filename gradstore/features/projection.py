"""Random projections of LoRA gradients to d dims, every entry a pure function of (seed, indices).

Two kinds, both applied module by module (``accumulate`` adds one module's slice x·Π[rows]
into the (B, d) output), so no caller ever needs a whole (B, P) gradient:

- ``sjlt`` (default): a sparse JL transform with one ±1 per input coordinate (CountSketch):
  coordinate j goes to column h(j) with sign s(j), both from one splitmix64 hash of
  (seed, j). Cost O(P) per example instead of O(P·d): at P = 17M it is a scatter-add, not a
  139-GFLOP product, so the model's forward and backward dominate the build.
- ``rademacher``: the dense ±1 matrix of the first stores, kept as the tested reference and
  for stores built with it. Its cost is O(P·d) per example: fine for toy models only.

Neither comes from a stateful RNG: the service queries a store on another device than the
worker that built it, with any batch size. The matrix is left unscaled: every feature is
L2-normalised afterwards, so the usual 1/√d (or 1/√c) factor would cancel.

The dense Rademacher matrix: each group of 64 signs of a row is one
64-bit word, a splitmix64 hash of (seed, row, column // 64); sign (i, j) is bit j mod 64 of
word (i, j // 64): 1 → −1, 0 → +1. Integer arithmetic (int64 multiplication wraps on CPU and
CUDA alike) makes it identical on every device.

Cost (2-core CPU sandbox, one thread): hashing is ~0.1 ns per sign (one hash per 64 signs);
turning bits into float32 ±1 dominates. ``rademacher_block`` writes each float's bits
directly (sign bit from the hash bit, exponent of 1.0) into a reused buffer: ~1.3 ns per
sign, against ~7 ns for a byte-table lookup and far more for a library RNG. The dense
product then costs 2·B flops per sign, so with no cache, generation still outweighs the
product for small batches: ``RademacherProjector`` keeps the whole matrix when it fits its
cache budget (a build projects thousands of batches with the same Π) and otherwise
regenerates it block by block per call. Π is never held whole beyond the budget.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_FLOAT_ONE_BITS = 0x3F800000  # IEEE-754 float32 1.0; setting bit 31 makes it −1.0
_SIGN_BIT = -(2**31)  # 0x80000000 as int32
_SJLT_DOMAIN = 0x5A17  # keeps the SJLT's hash stream apart from the Rademacher signs'


def _logical_shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x >>> bits`` on int64 (torch's ``>>`` is arithmetic): clear the copied sign bits."""
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


def rademacher_signs(seed: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Π[rows][:, cols] as float32 ±1, computed sign by sign: the definition (slow, simple)."""
    words = sign_words(seed, rows, cols // 64)  # each (row, column) pair's own word
    bits = (words >> (cols % 64)[None, :]) & 1  # bit 0 after any right shift is exact
    return 1.0 - 2.0 * bits.float()


def rademacher_block(
    seed: int,
    row_start: int,
    row_end: int,
    dim: int,
    device: torch.device | str = "cpu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows [row_start, row_end) of Π as float32 ±1: (row_end − row_start, dim), fast.

    ``out``, if given, is an int32 scratch tensor of at least (rows · ⌈dim/64⌉ · 64) elements
    that the result is written into (reusing it avoids page faults on every block).
    """
    device = torch.device(device)
    n_rows, n_words = row_end - row_start, (dim + 63) // 64
    words = sign_words(
        seed, torch.arange(row_start, row_end, device=device), torch.arange(n_words, device=device)
    )
    if sys.byteorder != "little":  # no byte reinterpretation: the definition, bit by bit
        return rademacher_signs(seed, torch.arange(row_start, row_end), torch.arange(dim))
    # Little-endian: int32 half h of a word holds its bits 32h..32h+31, so half k of the row
    # holds columns 32k..32k+31. Shifting bit s to bit 31 and OR-ing the bits of 1.0 gives the
    # float32 ±1 of column 32k+s without any float arithmetic or table lookup.
    halves = words.view(torch.int32)  # (rows, 2 · n_words)
    shifts = 31 - torch.arange(32, dtype=torch.int32, device=device)
    size = n_rows * n_words * 64
    if out is None:
        out = torch.empty(size, dtype=torch.int32, device=device)
    bits = out.view(-1)[:size].view(n_rows, 2 * n_words, 32)
    torch.bitwise_left_shift(halves[..., None], shifts, out=bits)
    bits.bitwise_and_(_SIGN_BIT).bitwise_or_(_FLOAT_ONE_BITS)
    signs = bits.view(torch.float32).view(n_rows, n_words * 64)
    return signs if dim == n_words * 64 else signs[:, :dim]


class RademacherProjector:
    """x ↦ x Π for Π ∈ {±1}^{in_dim × dim}, exact in fp32, generated blockwise by rows."""

    kind = "rademacher"

    def __init__(
        self,
        in_dim: int,
        dim: int,
        seed: int,
        device: torch.device | str = "cpu",
        block_rows: int | None = None,
        cache_bytes: int = 1 << 30,
    ):
        self.in_dim, self.dim, self.seed = in_dim, dim, seed
        self.device = torch.device(device)
        default_rows = max(1, (1 << 24) // dim)  # 64 MiB blocks
        self.block_rows = max(1, min(in_dim, block_rows or default_rows))
        self.cached = in_dim * dim * 4 <= cache_bytes
        self._matrix: torch.Tensor | None = None
        self._scratch: torch.Tensor | None = None

    def _block(self, start: int) -> torch.Tensor:
        end = min(start + self.block_rows, self.in_dim)
        if self._scratch is None:
            size = self.block_rows * ((self.dim + 63) // 64) * 64
            self._scratch = torch.empty(size, dtype=torch.int32, device=self.device)
        return rademacher_block(self.seed, start, end, self.dim, self.device, self._scratch)

    def matrix(self) -> torch.Tensor:
        """The whole Π (in_dim, dim), generated once; only when it fits the cache budget."""
        if not self.cached:
            raise MemoryError("Π exceeds the projector's cache budget; it is streamed by blocks")
        if self._matrix is None:
            matrix = torch.empty(self.in_dim, self.dim, device=self.device)
            for start in range(0, self.in_dim, self.block_rows):
                block = self._block(start)
                matrix[start : start + block.shape[0]].copy_(block)
            self._matrix, self._scratch = matrix, None
        return self._matrix

    def accumulate(
        self, out: torch.Tensor, x: torch.Tensor, offset: int, reuse_input: bool = False
    ) -> None:
        """out += x · Π[offset : offset + width]: one module's slice of the input rows."""
        width = _check_slice(self, out, x, offset)
        if self.cached:
            out.addmm_(x, self.matrix()[offset : offset + width])
            return
        for start in range(0, width, self.block_rows):
            end = min(start + self.block_rows, width)
            if self._scratch is None:
                size = self.block_rows * ((self.dim + 63) // 64) * 64
                self._scratch = torch.empty(size, dtype=torch.int32, device=self.device)
            block = rademacher_block(
                self.seed, offset + start, offset + end, self.dim, self.device, self._scratch
            )
            out.addmm_(x[:, start:end], block)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, dim), float32."""
        return project_whole(self, x)


class DenseReferenceProjector:
    """The whole Π built the obvious way, sign by sign from its bit, in float64 (tests only)."""

    def __init__(self, in_dim: int, dim: int, seed: int):
        self.dim = dim
        self.matrix = rademacher_signs(seed, torch.arange(in_dim), torch.arange(dim)).double()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ self.matrix).float()


def _check_slice(projector, out: torch.Tensor, x: torch.Tensor, offset: int) -> int:
    width = x.shape[1]
    if x.dim() != 2 or out.shape != (x.shape[0], projector.dim):
        raise ValueError(f"expected (B, w) rows into (B, {projector.dim}), got {tuple(x.shape)}")
    if offset < 0 or offset + width > projector.in_dim:
        raise ValueError(
            f"input slice [{offset}, {offset + width}) outside [0, {projector.in_dim})"
        )
    return width


def project_whole(projector, x: torch.Tensor) -> torch.Tensor:
    """(B, in_dim) → (B, dim) float32 through ``accumulate`` over the whole input."""
    if x.dim() != 2 or x.shape[1] != projector.in_dim:
        raise ValueError(f"expected (B, {projector.in_dim}) vectors, got {tuple(x.shape)}")
    out = torch.zeros(x.shape[0], projector.dim, device=projector.device)
    projector.accumulate(out, x.to(projector.device, torch.float32), 0)
    return out


def sjlt_entries(
    seed: int, rows: torch.Tensor, dim: int, block: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column (int64, in [0, dim)) and sign (float32 ±1) of input coordinates ``rows`` in
    block ``block`` of an SJLT whose blocks are ``dim`` columns wide.

    One splitmix64 word per (coordinate, block): bit 0 is the sign (1 → −1), the remaining 63
    bits modulo ``dim`` the column. Block 0's words are those of the one-nonzero ``sjlt``, so
    ``sparse`` with s = 1 is ``sjlt`` entry for entry. Integer arithmetic only, so identical
    on every device.
    """
    key = (seed ^ _SJLT_DOMAIN) + block * _GOLDEN
    key = (key + 2**63) % 2**64 - 2**63  # wrap into int64 as the device arithmetic does
    seed_key = splitmix64(torch.tensor([key], dtype=torch.int64, device=rows.device))
    words = splitmix64(rows.to(torch.int64) * _GOLDEN + seed_key)
    columns = _logical_shift_right(words, 1) % dim
    signs = 1.0 - 2.0 * (words & 1).to(torch.float32)
    return columns, signs


class SparseJLProjector:
    """x ↦ x S for a sparse JL transform S ∈ {0, ±1}^{in_dim × dim}, s nonzeros per row.

    Block construction (Kane and Nelson): the d columns are cut into s blocks of about d/s
    (block b is [⌊b·d/s⌋, ⌊(b+1)·d/s⌋)), and each
    input coordinate has one ±1 in every block, at a column and sign hashed from
    (seed, coordinate, block). s = 1 is the CountSketch of ``sjlt``; s > 1 averages s
    independent sketches, which tames the heavy tail a CountSketch has when a few coordinates
    dominate (two heavy coordinates collide in every block only with probability (s/d)^s).
    The s (column, sign) pairs of each input coordinate are cached per module slice while the
    cache stays under ``cache_bytes`` (12·s bytes per coordinate), else recomputed per call.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        seed: int,
        device: torch.device | str = "cpu",
        cache_bytes: int = 2 << 30,
        nonzeros: int = 1,
    ):
        if not 1 <= nonzeros <= dim:
            raise ValueError(f"nonzeros must be in [1, dim = {dim}], got {nonzeros}")
        self.in_dim, self.dim, self.seed, self.nonzeros = in_dim, dim, seed, nonzeros
        self.kind = "sjlt" if nonzeros == 1 else "sparse"
        self.device = torch.device(device)
        self.cache_bytes = cache_bytes
        self._entries: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._cached_bytes = 0

    def entries(self, offset: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(columns, signs) of coordinates [offset, offset + width), block after block: each
        of length s·width, block b's entries at [b·width, (b + 1)·width)."""
        key = (offset, width)
        if key in self._entries:
            return self._entries[key]
        rows = torch.arange(offset, offset + width, device=self.device)
        entries = sparse_entries(self.seed, rows, self.dim, self.nonzeros)
        size = 12 * width * self.nonzeros
        if self._cached_bytes + size <= self.cache_bytes:
            self._entries[key] = entries
            self._cached_bytes += size
        return entries

    def accumulate(
        self, out: torch.Tensor, x: torch.Tensor, offset: int, reuse_input: bool = False
    ) -> None:
        """out += x · S[offset : offset + width]; ``reuse_input`` lets it overwrite ``x``."""
        width = _check_slice(self, out, x, offset)
        columns, signs = self.entries(offset, width)
        if self.nonzeros == 1:
            signed = x.mul_(signs) if reuse_input else x * signs
        else:  # (B, s, w) → (B, s·w): one scatter-add over every block
            signed = (x[:, None, :] * signs.view(self.nonzeros, width)).view(x.shape[0], -1)
        out.index_add_(1, columns, signed)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, dim), float32."""
        return project_whole(self, x)

    def matrix(self) -> torch.Tensor:
        """S as a dense (in_dim, dim) matrix: for tests and small inputs only."""
        return sparse_matrix(self.seed, self.in_dim, self.dim, self.nonzeros)


def sparse_entries(
    seed: int, rows: torch.Tensor, dim: int, nonzeros: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every block's (columns in [0, dim), signs) of ``rows``, concatenated block by block."""
    bounds = [b * dim // nonzeros for b in range(nonzeros + 1)]
    parts = [sjlt_entries(seed, rows, bounds[b + 1] - bounds[b], b) for b in range(nonzeros)]
    columns = torch.cat([c + bounds[b] for b, (c, _) in enumerate(parts)])
    return columns, torch.cat([s for _, s in parts])


def sparse_matrix(seed: int, in_dim: int, dim: int, nonzeros: int) -> torch.Tensor:
    """The sparse JL matrix written out entry by entry from its definition, with Python
    integers instead of tensor arithmetic (the slow reference of tests)."""
    mask = 2**64 - 1
    golden = _GOLDEN & mask
    dense = torch.zeros(in_dim, dim)
    for block in range(nonzeros):
        start, end = block * dim // nonzeros, (block + 1) * dim // nonzeros
        seed_key = _splitmix64_int(((seed ^ _SJLT_DOMAIN) + block * golden) & mask)
        for row in range(in_dim):
            word = _splitmix64_int((row * golden + seed_key) & mask)
            dense[row, start + (word >> 1) % (end - start)] += -1.0 if word & 1 else 1.0
    return dense


def _splitmix64_int(x: int) -> int:
    """splitmix64's finaliser on a Python integer in [0, 2^64)."""
    mask = 2**64 - 1
    x ^= x >> 30
    x = (x * (_MIX1 & mask)) & mask
    x ^= x >> 27
    x = (x * (_MIX2 & mask)) & mask
    return x ^ (x >> 31)


class Projector(Protocol):
    """What the featurizer needs of a projection: d, a device, and module-slice accumulation
    (``kind`` and ``seed``: what the manifest records of it)."""

    kind: str
    seed: int
    dim: int
    device: torch.device

    def accumulate(
        self, out: torch.Tensor, x: torch.Tensor, offset: int, reuse_input: bool = False
    ) -> None: ...

    def project(self, x: torch.Tensor) -> torch.Tensor: ...


# The registry, keyed by the ``kind`` a manifest records; each value builds the projector
# from (in_dim, dim, seed, device, nonzeros). Old kinds keep their meaning forever.
PROJECTORS: dict[str, Callable[..., Projector]] = {
    "sjlt": lambda in_dim, dim, seed, device, nonzeros: SparseJLProjector(
        in_dim, dim, seed, device
    ),
    "sparse": lambda in_dim, dim, seed, device, nonzeros: SparseJLProjector(
        in_dim, dim, seed, device, nonzeros=nonzeros
    ),
    "rademacher": lambda in_dim, dim, seed, device, nonzeros: RademacherProjector(
        in_dim, dim, seed, device
    ),
}
PROJECTION_KINDS = tuple(PROJECTORS)
DEFAULT_NONZEROS = 4  # the ``sparse`` kind's s when none is given (docs/decisions.md)


def make_projector(
    kind: str,
    in_dim: int,
    dim: int,
    seed: int,
    device: torch.device | str = "cpu",
    nonzeros: int | None = None,
) -> Projector:
    """The projector a store's manifest names (``nonzeros``: the ``sparse`` kind's s)."""
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projection kind {kind!r}; known: {PROJECTION_KINDS}")
    return PROJECTORS[kind](in_dim, dim, seed, device, nonzeros or DEFAULT_NONZEROS)
