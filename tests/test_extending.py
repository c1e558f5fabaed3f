"""Adding a method and a gradient head takes exactly the files docs/architecture.md lists.

A toy head (the sign of the gradient) is one module that registers itself; a toy method (the
cosine of the targets' and the pool's toy-head features) is one module plus one registry
entry. Both are written here as fresh modules, then run end to end on the tiny model, and
the method's scores are checked against a one-example-at-a-time reference.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest
import torch

from gradstore.features.gradients import iter_reference_gradients
from gradstore.features.heads import HEADS
from gradstore.query import QueryEngine
from gradstore.selection import METHODS, run_selection
from gradstore.store.datastore import Datastore, TokenStore
from gradstore.toy.corpus import generate_targets

TOY_HEAD = '''
"""A toy gradient head: sign(g), the plain gradient's signs."""

from gradstore.features.heads import GradientHead, register_head


class Sign:
    def apply_(self, grads, offset):
        return grads.sign_()

    def __call__(self, grads):
        return grads.sign()


HEAD = register_head(GradientHead("toy_sign", "sign(g)", lambda model, index: Sign()))
'''

TOY_METHOD = '''
"""A toy method: cosine of sign(g) features, targets against every pool example."""

from gradstore.selection.base import (
    MethodDetails, MethodOptions, ScoreRequest, SelectionMethod, per_target_matrix,
)
from gradstore.store.datastore import TokenStore


class ToyOptions(MethodOptions):
    pass


class ToyDetails(MethodDetails):
    checkpoint: int


class ToySign(SelectionMethod[ToyOptions, ToyDetails]):
    name = "toy_sign"
    summary = "Cosine of sign(g) features at the last checkpoint"
    Options = ToyOptions
    Details = ToyDetails
    model = "checkpoints"

    def score(self, ctx, request: ScoreRequest[ToyOptions]):
        kept, positions, _ = ctx.target_encoder.encode_targets(request.targets)
        tokens = TokenStore(ctx.pool.root)
        pool = [tokens[row] for row in range(ctx.pool.num_examples)]
        model = ctx.models.checkpoint_model()
        last = max(model.checkpoints)
        with model.lock:
            featurizer = model.featurizer(last, 4, heads=("toy_sign",))
            targets = featurizer.featurize(kept, ("toy_sign",))["toy_sign"]
            rows = featurizer.featurize(pool, ("toy_sign",))["toy_sign"]
        return per_target_matrix(
            rows @ targets.T,
            [request.targets[p] for p in positions],
            details=ToyDetails(checkpoint=last),
        )
'''


@pytest.fixture
def toy_modules(tmp_path, monkeypatch):
    """The two new modules, importable; the method in the registry (its one line)."""
    (tmp_path / "toy_sign_head.py").write_text(textwrap.dedent(TOY_HEAD))
    (tmp_path / "toy_sign_method.py").write_text(textwrap.dedent(TOY_METHOD))
    monkeypatch.syspath_prepend(str(tmp_path))
    head = importlib.import_module("toy_sign_head")
    method = importlib.import_module("toy_sign_method")
    monkeypatch.setitem(METHODS, "toy_sign", method.ToySign())  # the registry line
    yield head, method
    HEADS.pop("toy_sign", None)
    for name in ("toy_sign_head", "toy_sign_method"):
        sys.modules.pop(name, None)


def reference_sign_features(model, examples) -> np.ndarray:
    """Whole gradient of one example at a time, its sign, projected, normalised."""
    rows = []
    for grad in iter_reference_gradients(model.model, examples, model.pad_token_id):
        projected = model.projector.project(torch.sign(grad)[None])
        rows.append(torch.nn.functional.normalize(projected, dim=1)[0].numpy())
    return np.stack(rows)


def test_a_toy_method_and_a_toy_head_run_end_to_end(contract_store, toy_modules):
    engine = QueryEngine(Datastore.open(contract_store), "cpu")
    targets = [t for t in generate_targets(seed=3, per_family=1) if t.subtask == "add"]
    n = engine.manifest.num_examples
    result = run_selection(engine, targets, "toy_sign", top_k=n, options={"aggregate": "max"})
    assert result.method == "toy_sign" and len(result.selected) == n
    model = engine.checkpoint_model()
    assert result.details == {"checkpoint": max(model.checkpoints)}

    model.activate(max(model.checkpoints))
    encoded, _, _ = engine.encode_targets(targets)
    query = reference_sign_features(model, encoded)
    tokens = TokenStore(engine.datastore.root)
    pool = reference_sign_features(model, [tokens[r] for r in range(n)])
    expected = (pool @ query.T).max(axis=1)  # one subtask, "max": its target's best score
    got = {s.id: s.score for s in result.selected}
    np.testing.assert_allclose([got[i] for i in engine.datastore.ids], expected, atol=1e-4)
    # the head is a feature kind like the built-in ones: a featurizer refuses unknown kinds
    with pytest.raises(ValueError, match="unknown feature kind"):
        model.featurizer(max(model.checkpoints), 4, heads=("no_such_head",))
