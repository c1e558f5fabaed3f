"""The hashed Rademacher projection against a dense reference, and its JL behaviour."""

from __future__ import annotations

import itertools

import pytest
import torch

from gradstore.features.projection import (
    PROJECTION_KINDS,
    DenseReferenceProjector,
    RademacherProjector,
    SparseJLProjector,
    make_projector,
    rademacher_block,
    rademacher_signs,
    sjlt_entries,
    sparse_matrix,
)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_blockwise_equals_dense_reference(seed):
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(seed))
    expected = DenseReferenceProjector(300, 200, seed).project(x)
    for block_rows in (1, 7, 64, 10**9):
        for cache_bytes in (0, 1 << 30):
            projector = RademacherProjector(
                300, 200, seed, block_rows=block_rows, cache_bytes=cache_bytes
            )
            assert projector.cached == (cache_bytes > 0)
            for _ in range(2):  # the second call reads the cache when there is one
                torch.testing.assert_close(projector.project(x), expected, rtol=1e-5, atol=1e-4)


def test_batch_size_does_not_change_a_row():
    x = torch.randn(9, 500, generator=torch.Generator().manual_seed(0))
    projector = RademacherProjector(500, 128, 3)
    full = projector.project(x)
    for i in range(9):
        torch.testing.assert_close(
            projector.project(x[i : i + 1])[0], full[i], rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("dim", [1, 63, 64, 130, 256])
def test_fast_block_equals_the_sign_by_sign_definition(dim):
    for seed in (0, 3, 2**40 + 1):
        expected = rademacher_signs(seed, torch.arange(11, 60), torch.arange(dim))
        assert torch.equal(rademacher_block(seed, 11, 60, dim), expected)
        scratch = torch.empty(64 * 64 * 5, dtype=torch.int32)  # reused buffer, larger than needed
        assert torch.equal(rademacher_block(seed, 11, 60, dim, out=scratch), expected)


def test_signs_are_a_function_of_position_only():
    whole = rademacher_block(5, 0, 40, 130)
    part = rademacher_block(5, 17, 23, 130)
    assert torch.equal(whole[17:23], part)
    assert set(whole.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(rademacher_block(6, 0, 40, 130), whole)


def test_signs_are_balanced_and_uncorrelated():
    signs = rademacher_block(0, 0, 2000, 512)
    assert abs(signs.mean().item()) < 0.01
    corr = (signs.T @ signs) / signs.shape[0]  # columns
    off_diagonal = corr - torch.eye(512)
    assert off_diagonal.abs().max().item() < 5 * 2000**-0.5
    row_corr = (signs[:200] @ signs[:200].T) / 512
    assert (row_corr - torch.eye(200)).abs().max().item() < 5 * 512**-0.5


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_cosines_are_preserved_within_jl_tolerance(kind):
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(1, 20000, generator=generator)
    noise = torch.randn(6, 20000, generator=generator)
    x = torch.cat([base + t * noise[i : i + 1] for i, t in enumerate([0.2, 0.5, 1, 2, 4, 8])])
    x = torch.cat([base, x])
    raw = torch.nn.functional.normalize(x, dim=1)
    projected = make_projector(kind, 20000, 8192, 0).project(x)
    projected = torch.nn.functional.normalize(projected, dim=1)
    error = (raw[1:] @ raw[0] - projected[1:] @ projected[0]).abs().max().item()
    assert error < 4 / 8192**0.5


def _splitmix64_python(x: int) -> int:
    """splitmix64's finaliser on Python ints modulo 2^64: an independent reference."""
    mask = (1 << 64) - 1
    x &= mask
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def _sjlt_entry_python(seed: int, row: int, dim: int) -> tuple[int, float]:
    seed_key = _splitmix64_python(seed ^ 0x5A17)
    word = _splitmix64_python(row * 0x9E3779B97F4A7C15 + seed_key)
    return (word >> 1) % dim, -1.0 if word & 1 else 1.0


@pytest.mark.parametrize("dim", [1, 100, 8192])
def test_sjlt_entries_equal_the_integer_definition(dim):
    for seed in (0, 7, 2**40 + 3):
        rows = [0, 1, 2, 63, 64, 1000, 2**31 + 5, 17_000_000]
        columns, signs = sjlt_entries(seed, torch.tensor(rows), dim)
        expected = [_sjlt_entry_python(seed, row, dim) for row in rows]
        assert columns.tolist() == [c for c, _ in expected]
        assert signs.tolist() == [s for _, s in expected]


def test_sjlt_slices_add_up_to_the_dense_matrix():
    """Accumulating module slices in any order equals x @ S with S built densely."""
    x = torch.randn(5, 700, generator=torch.Generator().manual_seed(1))
    for cache_bytes in (0, 1 << 20):
        projector = SparseJLProjector(700, 96, 4, cache_bytes=cache_bytes)
        dense = projector.matrix()
        assert torch.equal((dense != 0).sum(dim=1), torch.ones(700, dtype=torch.int64))
        expected = x.double() @ dense.double()
        out = torch.zeros(5, 96)
        for start, end in [(400, 700), (0, 123), (123, 400)]:
            projector.accumulate(out, x[:, start:end].clone(), start, reuse_input=True)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(projector.project(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_sjlt_columns_are_uniform_and_signs_balanced():
    columns, signs = sjlt_entries(0, torch.arange(200_000), 256)
    counts = torch.bincount(columns, minlength=256).double()
    expected = 200_000 / 256
    assert ((counts - expected).abs() < 5 * expected**0.5).all()  # within 5 sigma per column
    assert abs(signs.mean().item()) < 0.01


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_slices_outside_the_input_are_refused(kind):
    projector = make_projector(kind, 50, 8, 0)
    with pytest.raises(ValueError, match="outside"):
        projector.accumulate(torch.zeros(1, 8), torch.ones(1, 10), 45)


@pytest.mark.parametrize("nonzeros", [1, 2, 3, 4, 8])
def test_sparse_projection_equals_its_dense_reference_matrix(nonzeros):
    """Module slices accumulated in any order equal x @ S, S written out entry by entry with
    Python integers; each input coordinate has one ±1 in each of the s column blocks."""
    x = torch.randn(5, 700, generator=torch.Generator().manual_seed(2))
    dense = sparse_matrix(9, 700, 100, nonzeros)
    bounds = [b * 100 // nonzeros for b in range(nonzeros + 1)]
    for lo, hi in itertools.pairwise(bounds):
        assert torch.equal((dense[:, lo:hi] != 0).sum(dim=1), torch.ones(700, dtype=torch.int64))
    expected = x.double() @ dense.double()
    for cache_bytes in (0, 1 << 20):
        projector = make_projector("sparse", 700, 100, 9, nonzeros=nonzeros)
        projector.cache_bytes = cache_bytes  # type: ignore[attr-defined]
        out = torch.zeros(5, 100)
        for start, end in [(400, 700), (0, 123), (123, 400)]:
            projector.accumulate(out, x[:, start:end].clone(), start, reuse_input=True)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(projector.project(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_sparse_with_one_nonzero_is_the_sjlt_entry_for_entry():
    """Old ``sjlt`` stores keep their meaning: s = 1 is the CountSketch they were built with."""
    old = make_projector("sjlt", 500, 64, 5)
    assert torch.equal(make_projector("sparse", 500, 64, 5, nonzeros=1).matrix(), old.matrix())
    assert torch.equal(old.matrix(), sparse_matrix(5, 500, 64, 1))
    assert torch.equal(make_projector("sjlt", 500, 64, 5, nonzeros=8).matrix(), old.matrix())


def test_sparse_blocks_are_independent_and_balanced():
    columns, signs = make_projector("sparse", 50_000, 256, 0, nonzeros=4).entries(0, 50_000)
    per_block = columns.view(4, 50_000)
    for b in range(4):
        assert per_block[b].min() >= 64 * b and per_block[b].max() < 64 * (b + 1)
        counts = torch.bincount(per_block[b] - 64 * b, minlength=64).double()
        assert ((counts - 50_000 / 64).abs() < 5 * (50_000 / 64) ** 0.5).all()
    # two blocks' columns agree (mod 64) no more often than chance
    assert (per_block[0] == per_block[1] - 64).double().mean() < 2 / 64
    assert abs(signs.mean().item()) < 0.01


def test_an_old_sjlt_manifest_projection_reads_as_one_nonzero():
    from gradstore.config import ProjectionConfig

    old = ProjectionConfig.model_validate({"dim": 8192, "seed": 0, "kind": "sjlt"})
    assert old.nonzeros == 1
    assert ProjectionConfig.model_validate({"dim": 64, "seed": 0}).nonzeros == 4  # new default
    assert ProjectionConfig(kind="rademacher").nonzeros is None
    with pytest.raises(ValueError, match="takes no nonzeros"):
        ProjectionConfig(kind="rademacher", nonzeros=4)
