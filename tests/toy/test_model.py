"""The toy model: trains, saves, reloads offline, learns, and is a pure function of its seed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from gradstore.examples import write_jsonl
from gradstore.features.tokenization import ExampleEncoder
from gradstore.files import sha256_file
from gradstore.toy.corpus import generate_corpus
from gradstore.toy.model import (
    corpus_sha256,
    describe,
    ensure_toy_assets,
    render,
    train_toy_model,
)


def _mean_loss(model, tokenizer, examples) -> float:
    """Mean full-sequence LM loss, one example at a time (no padding to get wrong)."""
    losses = []
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([tokenizer(render(e, tokenizer.eos_token))["input_ids"]])
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return sum(losses) / len(losses)


def test_trained_model_reloads_offline_and_has_learned(toy_model_dir, toy_corpus, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(toy_model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM)
    assert (toy_model_dir / "model.safetensors").exists()
    assert model.config.vocab_size == len(tokenizer)
    info = describe(toy_model_dir)
    assert info["size"] == "tiny" and info["steps"] == 20 and info["seed"] == 0
    assert info["final_loss"] < info["initial_loss"]
    write_jsonl(toy_corpus, tmp_path / "c.jsonl")
    assert info["corpus_sha256"] == sha256_file(tmp_path / "c.jsonl")

    # The same architecture and tokenizer at initialisation: pre-training lowered the loss.
    untrained = train_toy_model(toy_corpus, tmp_path / "untrained", size="tiny", steps=1)
    start = AutoModelForCausalLM.from_pretrained(untrained, local_files_only=True)
    sample = toy_corpus[:24]
    assert _mean_loss(model, tokenizer, sample) < _mean_loss(start, tokenizer, sample) - 0.5


def test_same_seed_same_weights_other_seed_other_weights(toy_corpus, tmp_path):
    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        out = train_toy_model(
            toy_corpus, tmp_path / name, seed=seed, size="tiny", steps=3, progress=False
        )
        return load_file(out / "model.safetensors")

    first, again, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_pretraining_sees_exactly_what_the_encoder_produces(toy_model_dir, toy_corpus):
    """Pre-training text and featurization input must agree token for token."""
    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir, local_files_only=True)
    encoded, skipped = ExampleEncoder(tokenizer, 128, "auto").encode_all(toy_corpus)
    assert not skipped
    for e, enc in zip(toy_corpus, encoded, strict=True):
        assert tokenizer(render(e, tokenizer.eos_token))["input_ids"] == enc.input_ids


def test_thread_count_is_restored(toy_corpus, tmp_path):
    before = torch.get_num_threads()
    train_toy_model(toy_corpus[:8], tmp_path / "m", size="tiny", steps=1, progress=False)
    assert torch.get_num_threads() == before


def test_unknown_size_is_refused(toy_corpus, tmp_path):
    with pytest.raises(ValueError, match="unknown toy model size"):
        train_toy_model(toy_corpus, tmp_path / "m", size="huge")


def test_ensure_toy_assets_builds_once_and_rebuilds_when_incomplete(tmp_path, monkeypatch):
    import gradstore.toy.model as toy_model

    calls = []
    real = toy_model.train_toy_model

    def counting(examples, out_dir, **kwargs):
        calls.append(out_dir)
        return real(examples, out_dir, **(kwargs | {"steps": 2, "progress": False}))

    monkeypatch.setattr(toy_model, "train_toy_model", counting)
    corpus, model_dir = ensure_toy_assets(tmp_path, seed=0, per_family=3, size="tiny")
    assert len(calls) == 1 and corpus.exists() and (model_dir / "model.safetensors").exists()
    assert ensure_toy_assets(tmp_path, seed=0, per_family=3, size="tiny") == (corpus, model_dir)
    assert len(calls) == 1  # reused

    (model_dir / "toy_model.json").unlink()  # an interrupted save
    ensure_toy_assets(tmp_path, seed=0, per_family=3, size="tiny")
    assert len(calls) == 2
    corpus.write_text(corpus.read_text().replace("Q:", "Q;"))  # an edited corpus
    ensure_toy_assets(tmp_path, seed=0, per_family=3, size="tiny")
    assert len(calls) == 3
    assert "Q:" in corpus.read_text() and "Q;" not in corpus.read_text()  # regenerated
    # pre-trained on another sample of the skills, never on the pool it will rank
    pretraining = generate_corpus(seed=1000, per_family=3)
    assert describe(model_dir)["corpus_sha256"] == corpus_sha256(pretraining)
    assert describe(model_dir)["corpus_sha256"] != sha256_file(corpus)
    ensure_toy_assets(tmp_path, seed=1, per_family=3, size="tiny")  # another recipe
    assert len(calls) == 4
    hard_corpus, hard_model = ensure_toy_assets(
        tmp_path, seed=0, per_family=3, size="tiny", variant="hard"
    )
    assert len(calls) == 5 and hard_corpus != corpus and hard_model != model_dir
    hard_pretraining = generate_corpus(seed=1000, per_family=3, variant="hard")
    assert describe(hard_model)["corpus_sha256"] == corpus_sha256(hard_pretraining)
    assert ensure_toy_assets(tmp_path, seed=0, per_family=3, size="tiny") == (corpus, model_dir)
    assert len(calls) == 5  # the standard assets are still there
