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

The method gives the kernel, the relevance and the objective as a ``SetFunction``; the
``FacilityLocationPolicy`` picks the budget by lazy greedy, a pick's score its marginal gain
(non-increasing), reported under the column (subtask or target point) its target utility is
highest for.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from gradstore.artifacts.delift_kernel import DeliftKernel, feature_kind, load_kernel_parts
from gradstore.errors import InvalidInputError
from gradstore.examples import Example
from gradstore.features.icl_utility import InContextUtility
from gradstore.features.tokenization import pad_token_id
from gradstore.selection.base import MethodDetails, MethodOptions, ScoreRequest, SelectionMethod
from gradstore.selection.context import QueryContext
from gradstore.selection.set_function import SetFunction
from gradstore.selection.submodular import Objective, SparseKernel
from gradstore.store.datastore import TokenStore
from gradstore.store.search import top_k

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


class DeliftDetails(MethodDetails):
    """DELIFT's details: its objective and the greedy's marginal gains, in pick order."""

    objective: Mode = Field(description="The submodular objective maximised.")
    gains: list[float] = Field(description="Marginal gain of each pick, in greedy order.")


class Delift(SelectionMethod[DeliftOptions, DeliftDetails]):
    name = "delift"
    summary = "DELIFT: in-context utility kernel and facility-location selection (Agarwal et al.)"
    Options = DeliftOptions
    Details = DeliftDetails
    model = "checkpoints"  # target neighbours in gradient space; utilities by the base model
    default = False  # n·(K+1) pair forwards: more than the rest of the build (bench)

    def artifacts(self, options: DeliftOptions) -> tuple[str, ...]:
        return (DeliftKernel.name,)

    def kernel(self, ctx: QueryContext) -> SparseKernel:
        def make() -> SparseKernel:
            neighbours, utility, _ = load_kernel_parts(ctx.pool)
            scaled = min_max(utility)
            n = ctx.pool.num_examples
            return SparseKernel.from_neighbours(neighbours, scaled, n, self_value=1.0)

        return ctx.cached("delift-kernel", make)

    def score(
        self, ctx: QueryContext, request: ScoreRequest[DeliftOptions]
    ) -> SetFunction[DeliftDetails]:
        """Kernel + relevance + objective; the ``FacilityLocationPolicy`` selects."""
        options = request.options
        started = time.perf_counter()
        kernel = self.kernel(ctx)
        request.timings["load"] = (time.perf_counter() - started) * 1000
        n = kernel.num_points
        allowed = None
        objective = Objective()
        relevance = None  # (n, targets) target utilities, sparse in effect
        targets = request.targets
        if options.objective == "mutual_information":
            targets, relevance = self.target_relevance(ctx, request)
            objective = Objective(cap=options.eta * relevance.max(axis=1))
        elif options.objective == "conditional_gain":
            existing = self.existing_rows(ctx, options)
            objective = Objective(floor=options.nu * kernel.point_max(existing))
            allowed = np.ones(n, dtype=bool)
            allowed[existing] = False
        elif options.existing_ids:
            raise InvalidInputError("options.existing_ids is for objective 'conditional_gain'")

        def report(gains: np.ndarray) -> DeliftDetails:
            return DeliftDetails(objective=options.objective, gains=gains.tolist())

        return SetFunction(kernel, objective, targets, report, relevance, allowed)

    def existing_rows(self, ctx: QueryContext, options: DeliftOptions) -> np.ndarray:
        if not options.existing_ids:
            raise InvalidInputError("objective 'conditional_gain' needs options.existing_ids")
        unknown = [i for i in options.existing_ids if i not in ctx.pool.row_of]
        if unknown:
            raise InvalidInputError(f"options.existing_ids not in the pool: {unknown[:5]}")
        return np.array(sorted({ctx.pool.row_of[i] for i in options.existing_ids}))

    def target_relevance(
        self, ctx: QueryContext, request: ScoreRequest[DeliftOptions]
    ) -> tuple[list[Example], np.ndarray]:
        """(kept targets, (n, m) scaled utility of pool example i as a demonstration for
        target q, for q's nearest pool examples; 0 elsewhere)."""
        options = request.options
        encoder = ctx.target_encoder
        features, positions, _ = encoder.target_features(
            request.targets, request.timings, eos=options.target_eos
        )
        kept = [request.targets[p] for p in positions]
        encoded, _, _ = encoder.encode_targets(kept, eos=options.target_eos)
        started = time.perf_counter()
        weights = ctx.pool.checkpoint_weights()
        kind = feature_kind(ctx.pool)
        similarity = ctx.scorer.scores(kind, (features * weights[None, :, None]))
        n = similarity.shape[0]
        width = min(options.target_neighbours, n)
        nearest = [top_k(similarity[:, q], width) for q in range(len(kept))]
        tokens = ctx.cached("delift-tokens", lambda: TokenStore(ctx.pool.root))
        base = ctx.models.base_model()
        config = ctx.pool.manifest.config
        utility = InContextUtility(
            base.model, pad_token_id(encoder.tokenizer), encoder.tokenizer.bos_token_id,
            config.batch_size, base.as_base, batch_tokens=config.batch_tokens,
        )  # fmt: skip
        pairs = [(encoded[q], tokens[int(i)]) for q in range(len(kept)) for i in nearest[q]]
        with base.lock:
            alone = utility.distances([(e, None) for e in encoded])
            with_demo = utility.distances(pairs).reshape(len(kept), width)
        scaled = min_max(alone[:, None] - with_demo)
        relevance = np.zeros((n, len(kept)))
        for q in range(len(kept)):
            relevance[nearest[q], q] = scaled[q]
        request.timings["target_utilities"] = (time.perf_counter() - started) * 1000
        return kept, relevance
