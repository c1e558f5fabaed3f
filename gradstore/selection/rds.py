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

from gradstore.embeddings import HiddenStateEncoder
from gradstore.query import QueryEngine
from gradstore.selection.base import (
    MethodOptions,
    ScoreRequest,
    SelectionMethod,
    per_target_matrix,
)
from gradstore.selection.policies import PolicyName
from gradstore.selection.scores import ScoreMatrix
from gradstore.tokenization import pad_token_id

ARTIFACT = "hidden_states"


class RdsOptions(MethodOptions):
    aggregate: PolicyName = Field(
        "round_robin",
        description="Selection policy; RDS+ selects round-robin over target points (default).",
    )
    target_eos: bool = Field(False, description="Append EOS to prompt/completion targets.")


class Rds(SelectionMethod):
    name = "rds"
    summary = "RDS+: cosine of position-weighted mean-pooled hidden states (Ivison et al., 2025)"
    Options = RdsOptions
    model = "base"

    def artifacts(self, options: MethodOptions) -> tuple[str, ...]:
        return (ARTIFACT,)

    def score(self, engine: QueryEngine, request: ScoreRequest) -> ScoreMatrix:
        options: RdsOptions = request.options  # type: ignore[assignment]
        started = time.perf_counter()
        kept, positions, skipped = engine.encode_targets(request.targets, eos=options.target_eos)
        model, context, lock = engine.base_model()
        encoder = HiddenStateEncoder(
            model,
            pad_token_id(engine.tokenizer),
            engine.manifest.config.batch_size,
            context,
            batch_tokens=engine.manifest.config.batch_tokens,
        )
        with lock:
            queries = encoder.embed(kept)
        request.timings["target_embeddings"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        scores = engine.scanner.artifact_scores(ARTIFACT, queries)
        request.timings["search"] = (time.perf_counter() - started) * 1000
        return per_target_matrix(
            scores,
            [request.targets[p] for p in positions],
            details={"skipped_targets": [{"id": s.id, "reason": s.reason} for s in skipped]},
        )
