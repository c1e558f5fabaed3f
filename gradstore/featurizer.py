"""From examples to stored features at one checkpoint: gradient → (Adam) → projection → norm.

Examples are batched by length (less padding), every kind of feature asked for comes from
the same per-example gradients, and rows come back in the order they were given.
``featurize_one_at_a_time`` is the reference's loop, kept as the baseline of bench/featurize.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from gradstore.gradients import LoraGradientComputer, reference_per_example_gradients
from gradstore.preconditioner import AdamPreconditioner
from gradstore.tokenization import TokenizedExample, collate

FEATURE_KINDS = ("adam", "sgd")


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=1).cpu().numpy().astype(np.float32)


class CheckpointFeaturizer:
    """Projected, L2-normalised gradient features of examples at the active checkpoint."""

    def __init__(
        self,
        model: torch.nn.Module,
        projector,
        preconditioner: AdamPreconditioner | None,
        pad_token_id: int,
        batch_size: int,
    ):
        self.model = model
        self.projector = projector
        self.preconditioner = preconditioner
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.gradients = LoraGradientComputer(model)

    def _check(self, kinds: Sequence[str]) -> None:
        unknown = set(kinds) - set(FEATURE_KINDS)
        if unknown:
            raise ValueError(f"unknown feature kinds {sorted(unknown)}; known: {FEATURE_KINDS}")
        if "adam" in kinds and self.preconditioner is None:
            raise ValueError("'adam' features need the checkpoint's Adam moments")

    def _features(self, grads: torch.Tensor, kinds: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        for kind in kinds:
            vectors = self.preconditioner(grads) if kind == "adam" else grads
            out[kind] = _normalise(self.projector.project(vectors))
        return out

    def featurize(
        self,
        examples: Sequence[TokenizedExample],
        kinds: Sequence[str] = ("adam",),
        on_batch: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """{kind: (n, dim) float32}, rows in the order of ``examples``."""
        self._check(kinds)
        order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), i))
        dim = self.projector.dim
        out = {kind: np.empty((len(examples), dim), dtype=np.float32) for kind in kinds}
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size]
            batch = collate([examples[i] for i in positions], self.pad_token_id)
            grads = self.gradients.per_example(batch)
            for kind, values in self._features(grads, kinds).items():
                out[kind][positions] = values
            if on_batch is not None:
                on_batch(len(positions))
        return out

    def featurize_one_at_a_time(
        self, examples: Sequence[TokenizedExample], kinds: Sequence[str] = ("adam",)
    ) -> dict[str, np.ndarray]:
        """The reference's loop: one forward/backward and one projection per example."""
        self._check(kinds)
        rows: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
        for example in examples:
            grads = reference_per_example_gradients(self.model, [example], self.pad_token_id)
            for kind, values in self._features(grads, kinds).items():
                rows[kind].append(values[0])
        return {kind: np.stack(values) for kind, values in rows.items()}
