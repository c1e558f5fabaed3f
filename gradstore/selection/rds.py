"""RDS+ (Ivison et al., 2025): cosine of position-weighted mean-pooled final hidden states.

The pool's embeddings are a store artifact (``hidden_states``, made by forward passes of the
base model); a query embeds its targets the same way (target encoding, no EOS unless
``target_eos``) and scores every example against every target point. Round-robin over the
target points within a subtask, then across subtasks, is the paper's selection and the
default; under ``max``/``mean`` a subtask's score is its targets' mean cosine.
"""

from __future__ import annotations

import time

from pydantic import Field

from gradstore.features.embeddings import HiddenStateEncoder
from gradstore.features.tokenization import pad_token_id
from gradstore.selection.base import (
    MethodOptions,
    ScoreRequest,
    SelectionMethod,
    TargetDetails,
    per_target_matrix,
    skipped,
)
from gradstore.selection.context import QueryContext
from gradstore.selection.policies import PolicyName
from gradstore.selection.scores import ScoreMatrix

ARTIFACT = "hidden_states"


class RdsOptions(MethodOptions):
    aggregate: PolicyName = Field(
        "round_robin",
        description="Selection policy; RDS+ selects round-robin over target points (default).",
    )
    target_eos: bool = Field(False, description="Append EOS to prompt/completion targets.")


class RdsDetails(TargetDetails):
    """RDS+'s details: the targets it could not embed."""


class Rds(SelectionMethod[RdsOptions, RdsDetails]):
    name = "rds"
    summary = "RDS+: cosine of position-weighted mean-pooled hidden states (Ivison et al., 2025)"
    Options = RdsOptions
    Details = RdsDetails
    model = "base"

    def artifacts(self, options: RdsOptions) -> tuple[str, ...]:
        return (ARTIFACT,)

    def score(
        self, ctx: QueryContext, request: ScoreRequest[RdsOptions]
    ) -> ScoreMatrix[RdsDetails]:
        options = request.options
        started = time.perf_counter()
        kept, positions, skips = ctx.target_encoder.encode_targets(
            request.targets, eos=options.target_eos
        )
        base = ctx.models.base_model()
        config = ctx.pool.manifest.config
        encoder = HiddenStateEncoder(
            base.model,
            pad_token_id(ctx.target_encoder.tokenizer),
            config.batch_size,
            base.as_base,
            batch_tokens=config.batch_tokens,
        )
        with base.lock:
            queries = encoder.embed(kept)
        request.timings["target_embeddings"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        scores = ctx.scorer.artifact_scores(ARTIFACT, queries)
        request.timings["search"] = (time.perf_counter() - started) * 1000
        return per_target_matrix(
            scores,
            [request.targets[p] for p in positions],
            details=RdsDetails(skipped_targets=skipped(skips)),
        )
