"""The quality benchmarks' yardstick: seeded, and training on a task lowers its loss."""

from __future__ import annotations

from gradstore.features.modeling import load_tokenizer
from gradstore.features.tokenization import ExampleEncoder, pad_token_id
from gradstore.toy.corpus import generate_corpus
from gradstore.toy.finetune import fine_tune_and_evaluate


def test_fine_tuning_is_seeded_and_lowers_the_loss_of_what_it_trains_on(toy_model_dir):
    tokenizer = load_tokenizer(toy_model_dir)
    encoder = ExampleEncoder(tokenizer, 64, "tulu")
    examples, _ = encoder.encode_all(
        [e for e in generate_corpus(seed=5, per_family=6) if e.extra["meta"]["family"] == "add"]
    )
    pad = pad_token_id(tokenizer)
    untrained = fine_tune_and_evaluate(toy_model_dir, [], examples, pad, epochs=0)
    trained = fine_tune_and_evaluate(toy_model_dir, examples, examples, pad, epochs=3)
    assert trained < untrained
    assert fine_tune_and_evaluate(toy_model_dir, examples, examples, pad, epochs=3) == trained
