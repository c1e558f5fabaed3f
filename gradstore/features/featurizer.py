"""From examples to stored features at one checkpoint: gradient → head → projection → norm.

Examples are batched by length (less padding) and rows come back in the order they were
given. Inside each batch's backward, every LoRA map's per-example gradient goes through the
transform of every head (feature kind, see ``heads``) asked for, in place, and is projected
into that head's (B, d) outputs, then dropped: memory holds one map's (B, size) rows at a
time, never the whole (B, P) gradient. ``featurize_one_at_a_time`` is the reference's loop
(whole gradient, then the head's transform, then one projection), kept as the baseline of
bench/featurize and as a test oracle.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from gradstore.features.batching import length_sorted_batches
from gradstore.features.gradients import LoraGradientComputer, iter_reference_gradients
from gradstore.features.heads import HEADS, Transform
from gradstore.features.preconditioner import AdamPreconditioner, AdamUpdateDirection
from gradstore.features.tokenization import TokenizedExample, collate

# the built-in heads: "sgd": the plain gradient g; "adam": LESS's Γ (the checkpoint's Adam
# moments); "update": Influence Distillation's a ⊙ g (``update_directions``). More register
# in ``gradstore.features.heads``.
FEATURE_KINDS = ("adam", "sgd", "update")


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
        batch_tokens: int | None = None,
        update_direction: AdamUpdateDirection | None = None,
        transforms: Mapping[str, Transform | None] | None = None,
    ):
        """``transforms``: each head's transform at this checkpoint (from ``heads``); the
        ``preconditioner`` and ``update_direction`` arguments are the adam and update heads'."""
        self.model = model
        self.projector = projector
        self.preconditioner = preconditioner
        self.update_direction = update_direction
        self.transforms: dict[str, Transform | None] = {"sgd": None}
        if preconditioner is not None:
            self.transforms["adam"] = preconditioner
        if update_direction is not None:
            self.transforms["update"] = update_direction
        self.transforms.update(transforms or {})
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens or sys.maxsize  # padded tokens per batch (memory)
        self.gradients = LoraGradientComputer(model)
        # seconds spent so far on gradients and on preconditioning + projection (profiling)
        self.timings = {"gradient_s": 0.0, "projection_s": 0.0}

    def _check(self, kinds: Sequence[str]) -> None:
        unknown = set(kinds) - set(HEADS)
        if unknown:
            raise ValueError(f"unknown feature kinds {sorted(unknown)}; known: {sorted(HEADS)}")
        if "adam" in kinds and "adam" not in self.transforms:
            raise ValueError("'adam' features need the checkpoint's Adam moments")
        if "update" in kinds and "update" not in self.transforms:
            raise ValueError("'update' features need the checkpoint's Adam update direction")
        missing = [k for k in kinds if k not in self.transforms]
        if missing:
            raise ValueError(f"no transform given for heads {missing}")

    def _transform(self, kind: str) -> Transform | None:
        """What a kind does to the plain gradient before projecting it (None: nothing)."""
        return self.transforms[kind]

    def _features(self, grads: torch.Tensor, kinds: Sequence[str]) -> dict[str, np.ndarray]:
        """All kinds of whole (B, P) gradients, the reference's way (one projection each)."""
        started = time.perf_counter()
        out = {}
        for kind in kinds:
            transform = self._transform(kind)
            rows = transform(grads) if transform is not None else grads
            out[kind] = _normalise(self.projector.project(rows))
        self.timings["projection_s"] += time.perf_counter() - started
        return out

    def _batch_features(
        self, batch: dict[str, torch.Tensor], kinds: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """One forward and backward; each map's gradients projected as backward reaches it."""
        rows = batch["input_ids"].shape[0]
        device = self.projector.device
        outputs = {kind: torch.zeros(rows, self.projector.dim, device=device) for kind in kinds}
        projection_s = 0.0

        # the plain kind first (it only reads g), then the transforms, each in place on g,
        # the last one on g itself and the others on a copy
        heads = sorted(kinds, key=lambda kind: self._transform(kind) is not None)

        def project(offset: int, grads: torch.Tensor) -> None:
            nonlocal projection_s
            started = time.perf_counter()
            grads = grads.to(device)
            for position, kind in enumerate(heads):
                last = position == len(heads) - 1
                transform = self._transform(kind)
                if transform is None:
                    self.projector.accumulate(outputs[kind], grads, offset, reuse_input=last)
                    continue
                rows = transform.apply_(grads if last else grads.clone(), offset)
                self.projector.accumulate(outputs[kind], rows, offset, reuse_input=True)
            projection_s += time.perf_counter() - started

        started = time.perf_counter()
        self.gradients.for_each_module(batch, project)
        self.timings["gradient_s"] += time.perf_counter() - started - projection_s
        started = time.perf_counter()
        features = {kind: _normalise(values) for kind, values in outputs.items()}
        self.timings["projection_s"] += projection_s + time.perf_counter() - started
        return features

    def featurize(
        self,
        examples: Sequence[TokenizedExample],
        kinds: Sequence[str] = ("adam",),
        on_batch: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """{kind: (n, dim) float32}, rows in the order of ``examples``."""
        self._check(kinds)
        dim = self.projector.dim
        out = {kind: np.empty((len(examples), dim), dtype=np.float32) for kind in kinds}
        lengths = [len(e.input_ids) for e in examples]
        for positions in length_sorted_batches(lengths, self.batch_size, self.batch_tokens):
            batch = collate([examples[i] for i in positions], self.pad_token_id)
            for kind, values in self._batch_features(batch, kinds).items():
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
        gradients = iter_reference_gradients(self.model, examples, self.pad_token_id)
        while True:
            started = time.perf_counter()
            grad = next(gradients, None)
            self.timings["gradient_s"] += time.perf_counter() - started
            if grad is None:
                break
            for kind, values in self._features(grad[None], kinds).items():
                rows[kind].append(values[0])
        return {kind: np.stack(values) for kind, values in rows.items()}
