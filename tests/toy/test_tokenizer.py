"""The locally built tokenizer: any text, role markers as single tokens, offline round trip."""

from __future__ import annotations

from transformers import AutoTokenizer

from gradstore.examples import Message
from gradstore.features.tokenization import ExampleEncoder, tulu_text
from gradstore.toy.corpus import generate_corpus
from gradstore.toy.model import render
from gradstore.toy.tokenizer import build_tokenizer

MARKERS = ["<|system|>", "<|user|>", "<|assistant|>"]


def _tokenizer(vocab_size: int = 400):
    return build_tokenizer([render(e) for e in generate_corpus(0, 10)], vocab_size=vocab_size)


def test_special_tokens_are_single_ids_and_bos_is_prepended(tmp_path):
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for tok in (tokenizer, loaded):
        assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
            "<s>",
            "</s>",
            "<pad>",
            "<unk>",
        )
        assert not getattr(tok, "chat_template", None)  # so gradstore uses the Tulu format
        ids = tok("<|system|>\nhi\n<|user|>\nQ: 2+2\n<|assistant|>\n4</s>")["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        for marker in [*MARKERS, "</s>"]:
            marker_ids = tok(marker, add_special_tokens=False)["input_ids"]
            assert len(marker_ids) == 1 and marker_ids[0] in ids
        assert tok("ab", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id
    assert len({tokenizer.convert_tokens_to_ids(t) for t in MARKERS}) == 3
    assert tokenizer.get_vocab() == loaded.get_vocab()


def test_any_text_round_trips_through_bytes(tmp_path):
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Ünïcödé → 数学 🙂 tabs\tand\nnewlines"
    for tok in (tokenizer, loaded):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_vocabulary_size_is_respected_and_merges_are_learned():
    tokenizer = _tokenizer(vocab_size=400)
    assert 263 < len(tokenizer) <= 400  # 256 bytes + 7 specials, then merges
    assert len(tokenizer("Output:", add_special_tokens=False)["input_ids"]) < len("Output:")


def test_tulu_encoding_masks_the_header_and_keeps_answer_and_eos():
    tokenizer = _tokenizer()
    messages = [Message(role="user", content="Q: ~abc"), Message(role="assistant", content="cba")]
    encoded = ExampleEncoder(tokenizer, 64, "tulu")._tulu_messages(messages)
    input_ids, labels = encoded
    assert input_ids == tokenizer(tulu_text(messages, "</s>"))["input_ids"]
    kept = [i for i, label in zip(input_ids, labels, strict=True) if label != -100]
    assert tokenizer.decode(kept) == "cba</s>\n"
