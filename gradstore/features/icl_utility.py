"""DELIFT's in-context utility: how much a demonstration helps the model answer an example.

UF(i, j) = d(π_i(∅)) − d(π_i(j)) (Agarwal et al., 2025), where π_i(c) are the probabilities
the model gives, teacher-forced, to each of i's labelled tokens when c is placed before i,
and d(π) = ‖π − 1‖₂ / sqrt(T_i). A positive UF means j made i's answer more likely.

The demonstration is j's full pool encoding (prompt and answer, as it would be trained on)
followed by i's encoding without its leading BOS; only i's labelled tokens are scored. Pair
sequences are batched by length: one forward pass scores a whole batch of pairs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from gradstore.features.batching import length_sorted_batches
from gradstore.features.losses import labelled_token_losses
from gradstore.features.tokenization import IGNORE_INDEX, TokenizedExample, collate


def pair_example(
    example: TokenizedExample, demonstration: TokenizedExample | None, bos_id: int | None
) -> TokenizedExample:
    """``demonstration`` then ``example`` (its BOS dropped), labels on ``example``'s only."""
    if demonstration is None:
        return example
    ids, labels = list(example.input_ids), list(example.labels)
    if bos_id is not None and ids and ids[0] == bos_id:
        ids, labels = ids[1:], labels[1:]
    context = list(demonstration.input_ids)
    return TokenizedExample(example.id, context + ids, [IGNORE_INDEX] * len(context) + labels)


def probability_distance(probabilities: np.ndarray) -> float:
    """d(π) = ‖π − 1‖₂ / sqrt(T): 0 when every answer token is certain, up to 1."""
    if probabilities.size == 0:
        return 0.0
    return float(np.linalg.norm(probabilities - 1.0) / np.sqrt(probabilities.size))


class InContextUtility:
    """Teacher-forced answer distances of examples, alone or after a demonstration."""

    def __init__(
        self,
        model: torch.nn.Module,
        pad_token_id: int,
        bos_token_id: int | None,
        batch_size: int,
        context: Callable[[], AbstractContextManager] = nullcontext,
        batch_tokens: int | None = None,
    ):
        self.model = model
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens or sys.maxsize  # padded tokens per batch (memory)
        self.context = context  # e.g. a PEFT model's ``disable_adapter``: the base model
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def distances(
        self,
        pairs: Sequence[tuple[TokenizedExample, TokenizedExample | None]],
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """d(π_i(j)) for each (i, j) pair (j None: i alone), float64, in the pairs' order."""
        sequences = [pair_example(i, j, self.bos_token_id) for i, j in pairs]
        out = np.zeros(len(sequences), dtype=np.float64)
        lengths = [len(s.input_ids) for s in sequences]
        for positions in length_sorted_batches(lengths, self.batch_size, self.batch_tokens):
            batch = collate([sequences[p] for p in positions], self.pad_token_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self.context():
                token_losses, owner = labelled_token_losses(
                    self.model, batch["input_ids"], batch["attention_mask"], batch["labels"]
                )
            # d(π) = ‖p − 1‖ / sqrt(n) over the labelled tokens' probabilities p = e^(−loss)
            gaps = (torch.exp(-token_losses.double()) - 1.0) ** 2
            squared = gaps.new_zeros(len(positions)).index_add(0, owner, gaps)
            counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
            values = torch.where(counts > 0, squared.sqrt() / counts.clamp(min=1).sqrt(), 0.0)
            out[positions] = values.double().cpu().numpy()
            if on_batch is not None:
                on_batch(len(positions))
        return out

    def utilities(
        self,
        examples: Sequence[TokenizedExample],
        demonstrations: Sequence[TokenizedExample],
        base: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(UF(examples[p], demonstrations[p]) for each p, the examples' own d(π(∅)))."""
        if base is None:
            base = self.distances([(e, None) for e in examples])
        with_demo = self.distances(list(zip(examples, demonstrations, strict=True)))
        return base - with_demo, base


def reference_distance(
    model: torch.nn.Module, example: TokenizedExample, demonstration, bos_id: int | None
) -> float:
    """One pair, one unpadded forward, probabilities read token by token: the slow check."""
    sequence = pair_example(example, demonstration, bos_id)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sequence.input_ids])).logits[0]
    probabilities = []
    for t in range(1, len(sequence.input_ids)):
        if sequence.labels[t] != IGNORE_INDEX:
            p = torch.softmax(logits[t - 1].double(), dim=-1)[sequence.labels[t]]
            probabilities.append(float(p))
    return probability_distance(np.array(probabilities))
