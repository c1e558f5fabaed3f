"""DELIFT (Agarwal et al., ICLR 2025): in-context utility kernel plus submodular selection.

S_ij, how much pool example j helps the model answer pool example i in context, is the
store's ``delift_kernel`` (each i's K nearest neighbours, min-max scaled to [0, 1] over the
stored values as the reference scales its kernel; S_ii = 1: an example represents itself,
as the largest entry of the reference's dense kernel does). Objectives, by ``objective``:

- ``mutual_information`` (task-specific, default): Σ_i min(max_{j∈A} S_ij, η·max_q R_iq),
  with R_iq the utility of pool example i as a demonstration for target q, computed at query
  time for each target's ``target_neighbours`` nearest pool examples (gradient space);
- ``facility_location`` (instruction tuning): Σ_i max_{j∈A} S_ij; the targets only label;
- ``conditional_gain`` (continual): Σ_i max(max_{j∈A} S_ij − ν·max_{e∈E} S_ie, 0), with E the
  examples given by ``existing_ids`` (never selected again).

Lazy greedy picks the budget; a pick's score is its marginal gain (non-increasing), reported
under the column (subtask or target point) its target utility is highest for.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from gradstore.artifacts.delift_kernel import DeliftKernel, feature_kind, load_kernel_parts
from gradstore.errors import InvalidInputError
from gradstore.icl_utility import InContextUtility
from gradstore.query import QueryEngine
from gradstore.search import top_k
from gradstore.selection.base import (
    MethodOptions,
    ScoreRequest,
    SelectionMethod,
    per_target_matrix,
    target_columns,
)
from gradstore.selection.scores import ScoreMatrix
from gradstore.submodular import Objective, SparseKernel, lazy_greedy
from gradstore.tokenization import pad_token_id

Mode = Literal["mutual_information", "facility_location", "conditional_gain"]


class DeliftOptions(MethodOptions):
    objective: Mode = Field(
        "mutual_information",
        description="'mutual_information': FL mutual information with the targets "
        "(task-specific); 'facility_location': cover the pool (instruction tuning; targets "
        "only label the picks); 'conditional_gain': cover what 'existing_ids' does not "
        "(continual fine-tuning).",
    )
    existing_ids: list[str] | None = Field(
        None, description="Pool IDs already trained on ('conditional_gain' only)."
    )
    eta: float = Field(1.0, gt=0, description="Mutual information: weight of target relevance.")
    nu: float = Field(1.0, ge=0, description="Conditional gain: weight of the existing set.")
    target_neighbours: int = Field(
        32, ge=1, le=4096, description="Pool examples per target whose utility is computed."
    )
    target_eos: bool = Field(False, description="Append EOS to prompt/completion targets.")


def min_max(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] (all zeros when every value is equal)."""
    values = values.astype(np.float64)
    if values.size == 0:
        return values
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


class Delift(SelectionMethod):
    name = "delift"
    summary = "DELIFT: in-context utility kernel and facility-location selection (Agarwal et al.)"
    Options = DeliftOptions
    model = "checkpoints"  # target neighbours in gradient space; utilities by the base model
    default = False  # n·(K+1) pair forwards: more than the rest of the build (bench)
    set_function = True

    def artifacts(self, options: MethodOptions) -> tuple[str, ...]:
        return (DeliftKernel.name,)

    def kernel(self, engine: QueryEngine) -> SparseKernel:
        def make() -> SparseKernel:
            neighbours, utility, _ = load_kernel_parts(engine.datastore)
            scaled = min_max(utility)
            n = engine.manifest.num_examples
            return SparseKernel.from_neighbours(neighbours, scaled, n, self_value=1.0)

        return engine.cached("delift-kernel", make)

    def score(self, engine: QueryEngine, request: ScoreRequest) -> ScoreMatrix:
        options: DeliftOptions = request.options  # type: ignore[assignment]
        started = time.perf_counter()
        kernel = self.kernel(engine)
        request.timings["load"] = (time.perf_counter() - started) * 1000
        n = kernel.num_points
        allowed = None
        objective = Objective()
        relevance = None  # (n, targets) target utilities, sparse in effect
        targets = request.targets
        if options.objective == "mutual_information":
            targets, relevance = self.target_relevance(engine, request, options)
            objective = Objective(cap=options.eta * relevance.max(axis=1))
        elif options.objective == "conditional_gain":
            existing = self.existing_rows(engine, options)
            objective = Objective(floor=options.nu * kernel.point_max(existing))
            allowed = np.ones(n, dtype=bool)
            allowed[existing] = False
        elif options.existing_ids:
            raise InvalidInputError("options.existing_ids is for objective 'conditional_gain'")
        started = time.perf_counter()
        picked, gains = lazy_greedy(kernel, request.k, objective, allowed)
        request.timings["greedy"] = (time.perf_counter() - started) * 1000
        return self.matrix(request, targets, picked, gains, relevance)

    def existing_rows(self, engine: QueryEngine, options: DeliftOptions) -> np.ndarray:
        if not options.existing_ids:
            raise InvalidInputError("objective 'conditional_gain' needs options.existing_ids")
        unknown = [i for i in options.existing_ids if i not in engine.datastore.row_of]
        if unknown:
            raise InvalidInputError(f"options.existing_ids not in the pool: {unknown[:5]}")
        return np.array(sorted({engine.datastore.row_of[i] for i in options.existing_ids}))

    def target_relevance(self, engine: QueryEngine, request: ScoreRequest, options: DeliftOptions):
        """(kept targets, (n, m) scaled utility of pool example i as a demonstration for
        target q, for q's nearest pool examples; 0 elsewhere)."""
        features, positions, _ = engine.target_features(
            request.targets, request.timings, eos=options.target_eos
        )
        kept = [request.targets[p] for p in positions]
        encoded, _, _ = engine.encode_targets(kept, eos=options.target_eos)
        started = time.perf_counter()
        weights = engine.datastore.checkpoint_weights()
        kind = feature_kind(engine.datastore)
        similarity = engine.scanner.scores(kind, (features * weights[None, :, None]))
        n = similarity.shape[0]
        width = min(options.target_neighbours, n)
        nearest = [top_k(similarity[:, q], width) for q in range(len(kept))]
        tokens = engine.cached("delift-tokens", lambda: _token_store(engine))
        model, context, lock = engine.base_model()
        utility = InContextUtility(
            model, pad_token_id(engine.tokenizer), engine.tokenizer.bos_token_id,
            engine.manifest.config.batch_size, context,
            batch_tokens=engine.manifest.config.batch_tokens,
        )  # fmt: skip
        pairs = [(encoded[q], tokens[int(i)]) for q in range(len(kept)) for i in nearest[q]]
        with lock:
            base = utility.distances([(e, None) for e in encoded])
            with_demo = utility.distances(pairs).reshape(len(kept), width)
        scaled = min_max(base[:, None] - with_demo)
        relevance = np.zeros((n, len(kept)))
        for q in range(len(kept)):
            relevance[nearest[q], q] = scaled[q]
        request.timings["target_utilities"] = (time.perf_counter() - started) * 1000
        return kept, relevance

    def matrix(self, request, targets, picked, gains, relevance) -> ScoreMatrix:
        """Picks × columns: a pick's gain under the column whose targets it helps most (all
        columns when there are no target utilities), 0 elsewhere."""
        subtasks, column_subtask = target_columns(targets)
        columns = len(targets) if request.per_target else len(subtasks)
        scores = np.zeros((len(picked), columns))
        if relevance is None:
            scores[:] = gains[:, None]
        else:
            per_column = relevance[picked]
            if not request.per_target:
                per_column = np.stack(
                    [per_column[:, np.asarray(column_subtask) == s].max(axis=1)
                     for s in range(len(subtasks))], axis=1,
                )  # fmt: skip
            scores[np.arange(len(picked)), per_column.argmax(axis=1)] = gains
        details = {"objective": request.options.objective, "gains": gains.tolist()}
        if request.per_target:
            return per_target_matrix(scores, targets, rows=picked, details=details)
        return ScoreMatrix.per_subtask(scores, subtasks, rows=picked, details=details)


def _token_store(engine: QueryEngine):
    from gradstore.store import TokenStore

    return TokenStore(engine.datastore.root)
