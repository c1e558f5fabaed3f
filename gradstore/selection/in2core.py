"""In2Core (arXiv 2408.03560): DataInf influence on the last quarter of the blocks, + coverage.

The pool's per-block gradient features at the last warmup checkpoint are the store artifact
``layer_gradients``; a query computes its targets' the same way (truncated backward), then
scores every pool example by −I(k) = Σ_l h_l·g_kl (``datainf``) per target point. A subtask's
score is the mean of its targets' (DataInf with the subtask's mean target gradient); the
default policy ranks by the best subtask. ``details.coverage`` reports, per target point, its
strong proponents and top proponents (``coverage``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from gradstore.features.influence_features import LAYER_GRADIENTS, last_checkpoint, layer_featurizer
from gradstore.selection.base import (
    MethodOptions,
    ScoreRequest,
    SelectionMethod,
    TargetDetails,
    per_target_matrix,
    skipped,
    target_columns,
)
from gradstore.selection.context import PoolReader, QueryContext
from gradstore.selection.coverage import coverage_report
from gradstore.selection.datainf import PoolBlock, datainf_scores
from gradstore.selection.scores import ScoreMatrix


class In2CoreOptions(MethodOptions):
    coverage_z: float = Field(
        3.0,
        ge=0,
        description="A strong proponent scores this many robust standard deviations above "
        "the median score (every target pooled); for details.coverage.",
    )
    coverage_top: int = Field(
        5, ge=0, le=100, description="Top proponents listed per target in details.coverage."
    )
    target_eos: bool = Field(False, description="Append EOS to prompt/completion targets.")


def layer_gradient_blocks(pool: PoolReader) -> Iterator[PoolBlock]:
    """(first row, directions, norms) per stored unit, in row order (memory-mapped)."""
    files = pool.artifact_entry(LAYER_GRADIENTS).files
    start = 0
    for directions_file, norms_file in zip(files[0::2], files[1::2], strict=True):
        directions = pool.artifact_array(LAYER_GRADIENTS, directions_file)
        norms = pool.artifact_array(LAYER_GRADIENTS, norms_file)
        yield start, directions, norms
        start += directions.shape[0]


def pool_norms(pool: PoolReader) -> np.ndarray:
    return np.concatenate([np.asarray(n) for _, _, n in layer_gradient_blocks(pool)])


class In2CoreDetails(TargetDetails):
    """In2Core's details: the coverage report and the blocks its gradients cover."""

    coverage: dict[str, Any] = Field(
        description="Per target point: its strong proponents in the pool and its top ones "
        "({threshold, z, targets: [{target, subtask, strong_proponents, top: [{id, score}]}]})."
    )
    layers: list[int] = Field(description="The transformer blocks whose gradients are used.")


class In2Core(SelectionMethod[In2CoreOptions, In2CoreDetails]):
    name = "in2core"
    summary = (
        "In2Core: DataInf influence on the last quarter of the blocks, with per-target "
        "coverage (arXiv 2408.03560)"
    )
    Options = In2CoreOptions
    Details = In2CoreDetails
    model = "checkpoints"
    default = False  # its artifact costs a (truncated) backward pass over the pool

    def artifacts(self, options: In2CoreOptions) -> tuple[str, ...]:
        return (LAYER_GRADIENTS,)

    def score(
        self, ctx: QueryContext, request: ScoreRequest[In2CoreOptions]
    ) -> ScoreMatrix[In2CoreDetails]:
        options = request.options
        params = ctx.pool.artifact_entry(LAYER_GRADIENTS).params
        started = time.perf_counter()
        kept, positions, skips = ctx.target_encoder.encode_targets(
            request.targets, eos=options.target_eos
        )
        model = ctx.models.checkpoint_model()
        config = ctx.pool.manifest.config
        last = last_checkpoint(list(model.checkpoints.values()))
        with model.lock:
            featurizer = layer_featurizer(
                model,
                last.index,
                params["layers"],
                params["dim_per_layer"],
                config.batch_size,
                config.batch_tokens,
            )
            directions, norms = featurizer.featurize(kept)
        request.timings["target_gradients"] = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        scores = datainf_scores(
            lambda: layer_gradient_blocks(ctx.pool),
            pool_norms(ctx.pool),
            directions,
            norms,
            featurizer.layer_sizes,
            ctx.scorer.device,
        )
        request.timings["search"] = (time.perf_counter() - started) * 1000
        targets = [request.targets[p] for p in positions]
        subtasks, column_subtask = target_columns(targets)
        coverage = coverage_report(
            scores,
            ctx.pool.ids,
            [t.id for t in targets],
            [subtasks[c] for c in column_subtask],
            options.coverage_z,
            options.coverage_top,
        )
        return per_target_matrix(
            scores.astype(np.float32),
            targets,
            details=In2CoreDetails(
                skipped_targets=skipped(skips), coverage=coverage, layers=list(params["layers"])
            ),
        )
