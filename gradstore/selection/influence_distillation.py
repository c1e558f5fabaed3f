"""Influence Distillation (Nikdan et al., 2025, arXiv 2505.19051): Adam-aware first-order
scores, round-robin over target points, and second-order weights for what is selected.

Column t of the score matrix is p_t(i) = ⟨a ⊙ g_i, g_t⟩ on projected unit vectors: how one
Adam step on example i (the direction ``AdamUpdateDirection`` takes from the last
checkpoint's moments) aligns with target t's plain gradient. Two modes fill it:

- ``exact``: every pool example's direction is stored (artifact ``update_directions``), one
  pass over it scores every target.
- ``landmark``: only L random landmark examples get exact directions (L backward passes at
  query time); the rest are propagated by RBF kernel regression over cheap embeddings — the
  store's ``hidden_states`` (forward passes only), where the reference uses JVP embeddings.

Selection is round-robin over target points, as the reference selects. Each selected
example's weight comes from the non-negative QP of ``qp`` (the target-Fisher second-order
term, which splits weight among redundant examples).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from gradstore.features.influence_features import (
    UPDATE_DIRECTIONS,
    last_checkpoint,
    update_featurizer,
)
from gradstore.selection.base import (
    MethodOptions,
    ScoreRequest,
    SelectionMethod,
    TargetDetails,
    per_target_matrix,
    skipped,
)
from gradstore.selection.context import PoolReader, QueryContext
from gradstore.selection.landmarks import DAMPING, propagate
from gradstore.selection.policies import PolicyName
from gradstore.selection.qp import solve_weights
from gradstore.selection.scores import ScoreMatrix
from gradstore.store.datastore import TokenStore

EmbeddingName = Literal["hidden_states", "gradients.adam", "gradients.sgd"]


class InfluenceDistillationOptions(MethodOptions):
    aggregate: PolicyName = Field(
        "round_robin",
        description="Selection policy; the reference selects round-robin over target points.",
    )
    mode: Literal["exact", "landmark"] = Field(
        "exact",
        description="'exact': the stored update directions of every pool example; "
        "'landmark': exact directions for 'landmarks' random examples, propagated to the rest "
        "over the hidden_states embeddings by RBF kernel regression.",
    )
    landmarks: int = Field(
        4096, ge=2, description="Landmark examples in 'landmark' mode (at most the pool)."
    )
    landmark_seed: int = Field(0, description="Seed of the landmark sample.")
    embeddings: EmbeddingName = Field(
        "hidden_states",
        description="What 'landmark' mode propagates over: the RDS+ embeddings (forward "
        "passes only) or a LESS store's gradient features (every checkpoint concatenated).",
    )
    damping: float = Field(
        DAMPING, gt=0, description="Kernel ridge damping δ, relative to the kernel's diagonal."
    )
    weights: bool = Field(
        True, description="Solve the second-order QP for each selected example's weight."
    )
    eta: float = Field(
        1.0, ge=0, description="Weight of the second-order (target-Fisher) term in the QP."
    )
    l2: float = Field(0.01, ge=0, description="L2 penalty λ‖w‖² in the QP.")
    target_eos: bool = Field(False, description="Append EOS to prompt/completion targets.")


def landmark_rows(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct pool rows, seeded, sorted (all rows when the pool is smaller)."""
    if count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


class InfluenceDistillationDetails(TargetDetails):
    """Influence Distillation's details in 'exact' mode."""

    mode: Literal["exact", "landmark"] = Field(description="How the pool was scored.")


class LandmarkDetails(InfluenceDistillationDetails):
    """Influence Distillation's details in 'landmark' mode."""

    landmarks: int = Field(description="Pool examples whose update directions were exact.")


class InfluenceDistillation(
    SelectionMethod[InfluenceDistillationOptions, InfluenceDistillationDetails]
):
    name = "influence_distillation"
    summary = (
        "Influence Distillation: Adam-aware first-order influence, round-robin over targets, "
        "second-order weights (Nikdan et al., 2025)"
    )
    Options = InfluenceDistillationOptions
    Details = InfluenceDistillationDetails
    model = "checkpoints"
    default = False  # 'exact' needs a backward pass over the pool

    def artifacts(self, options: InfluenceDistillationOptions) -> tuple[str, ...]:
        return (UPDATE_DIRECTIONS,) if options.mode == "exact" else (options.embeddings,)

    def score(
        self, ctx: QueryContext, request: ScoreRequest[InfluenceDistillationOptions]
    ) -> ScoreMatrix[InfluenceDistillationDetails]:
        options = request.options
        started = time.perf_counter()
        kept, positions, skips = ctx.target_encoder.encode_targets(
            request.targets, eos=options.target_eos
        )
        model = ctx.models.checkpoint_model()
        last = last_checkpoint(list(model.checkpoints.values()))
        config = ctx.pool.manifest.config
        with model.lock:
            targets = model.featurizer(
                last.index, config.batch_size, adam=False, batch_tokens=config.batch_tokens
            ).featurize(kept, ("sgd",))
        request.timings["target_gradients"] = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        details: InfluenceDistillationDetails
        if options.mode == "exact":
            scores = ctx.scorer.artifact_scores(UPDATE_DIRECTIONS, targets["sgd"])
            details = InfluenceDistillationDetails(mode="exact", skipped_targets=skipped(skips))
        else:
            scores, used = self._landmark_scores(ctx, options, last, targets["sgd"])
            details = LandmarkDetails(
                mode="landmark", landmarks=used, skipped_targets=skipped(skips)
            )
        request.timings["search"] = (time.perf_counter() - started) * 1000
        return per_target_matrix(
            np.asarray(scores, dtype=np.float32),
            [request.targets[p] for p in positions],
            details=details,
        )

    def _landmark_scores(
        self,
        ctx: QueryContext,
        options: InfluenceDistillationOptions,
        last,
        targets: np.ndarray,
    ):
        n = ctx.pool.num_examples
        rows = landmark_rows(n, options.landmarks, options.landmark_seed)
        tokens = TokenStore(ctx.pool.root)
        model = ctx.models.checkpoint_model()
        config = ctx.pool.manifest.config
        with model.lock:
            directions = update_featurizer(
                model, last, config.batch_size, config.batch_tokens
            ).featurize([tokens[int(r)] for r in rows], ("update",))["update"]
        exact = directions @ targets.T  # (L, m)
        blocks = embedding_blocks(ctx.pool, options.embeddings)
        landmarks = _rows_of(blocks, rows)
        scores = propagate(iter(blocks), n, landmarks, exact, options.damping, ctx.scorer.device)
        return scores, len(rows)

    def weights(
        self,
        matrix: ScoreMatrix[InfluenceDistillationDetails],
        positions: np.ndarray,
        options: InfluenceDistillationOptions,
    ) -> np.ndarray | None:
        if not options.weights:
            return None
        alignments = matrix.scores[positions].astype(np.float64)
        return solve_weights(alignments, options.eta, options.l2)


def embedding_blocks(pool: PoolReader, name: str) -> list[np.ndarray]:
    """Row blocks of the embeddings, memory-mapped; gradient features concatenated over the
    checkpoints one block at a time (a block is the only copy)."""
    if name.startswith("gradients."):
        kind = name.split(".", 1)[1]
        return _Concatenated(pool.feature_blocks(kind))  # type: ignore[return-value]
    return [np.asarray(b.arrays[0]) for b in pool.artifact_blocks(name)]


class _Concatenated:
    """A re-iterable list-like of (rows, N·d) blocks, each built when it is read."""

    def __init__(self, blocks):
        self.blocks = list(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.concatenate([np.asarray(a) for a in self.blocks[i].arrays], axis=1)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _rows_of(blocks: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The given pool rows of consecutive row blocks, float32 (len(rows), dim)."""
    out: np.ndarray | None = None
    start = 0
    for block in blocks:
        if out is None:
            out = np.empty((len(rows), block.shape[1]), dtype=np.float32)
        inside = np.flatnonzero((rows >= start) & (rows < start + len(block)))
        out[inside] = block[rows[inside] - start]
        start += len(block)
    assert out is not None, "no embedding rows"
    return out
