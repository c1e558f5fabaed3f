"""Tokenisation against hand-computed expectations on a byte-level tokenizer.

With one token per byte (plus single-token specials) every expected label can be counted
by hand, so these tests check the reference's masking rules independently of the code.
"""

import pytest
from tiny_assets import SPECIALS, byte_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from gradstore.examples import load_examples
from gradstore.features.tokenization import (
    IGNORE_INDEX,
    ExampleEncoder,
    SkippedExample,
    TokenizedExample,
    collate,
)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def answer_tokens(encoded):
    pairs = zip(encoded.input_ids, encoded.labels, strict=True)
    return [token for token, label in pairs if label != IGNORE_INDEX]


def n(text):
    return len(text.encode())


def test_tulu_messages_mask_everything_but_answers(tokenizer):
    (example,) = load_examples(
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 2+2?"},
                    {"role": "assistant", "content": " 4 "},
                    {"role": "user", "content": "and 3+3?"},
                    {"role": "assistant", "content": "6"},
                ]
            }
        ]
    )
    encoded = ExampleEncoder(tokenizer, 512, "tulu").encode(example)
    assert isinstance(encoded, TokenizedExample)
    # <s> <|system|> "\nBe brief.\n" <|user|> "\nWhat is 2+2?\n" <|assistant|> "\n"
    masked_1 = 1 + 1 + n("\nBe brief.\n") + 1 + n("\nWhat is 2+2?\n") + 1 + n("\n")
    answer_1 = n("4") + 1 + n("\n")  # content stripped, then </s>, then the newline
    masked_2 = 1 + n("\nand 3+3?\n") + 1 + n("\n")
    answer_2 = n("6") + 1 + n("\n")
    expected = (
        [IGNORE_INDEX] * masked_1 + [1] * answer_1 + [IGNORE_INDEX] * masked_2 + [1] * answer_2
    )
    assert len(encoded.input_ids) == len(expected)
    assert [IGNORE_INDEX if e == IGNORE_INDEX else 1 for e in encoded.labels] == expected
    kept = [
        t
        for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
        if label != IGNORE_INDEX
    ]
    assert tokenizer.decode(kept) == "4</s>\n6</s>\n"


def test_prompt_completion_adds_a_space_and_eos(tokenizer):
    (example,) = load_examples([{"prompt": "Q: 2+2", "completion": "4"}])
    encoded = ExampleEncoder(tokenizer, 512, "tulu").encode(example)
    assert tokenizer.decode(encoded.input_ids, skip_special_tokens=False) == "<s>Q: 2+2 4</s>"
    n_prompt = 1 + n("Q: 2+2")
    assert encoded.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert encoded.labels[n_prompt:] == encoded.input_ids[n_prompt:]
    assert encoded.num_target_tokens == n(" 4") + 1


def test_a_long_prompt_loses_its_left_end_and_keeps_the_completion(tokenizer):
    long, fits = load_examples(
        [
            {"id": "long", "prompt": "x" * 50, "completion": "yes"},
            {"id": "fits", "prompt": "x" * 5, "completion": "yes"},
        ]
    )
    whole = ExampleEncoder(tokenizer, 4096, "tulu").encode(long)
    kept, skipped = ExampleEncoder(tokenizer, 20, "tulu").encode_all([long, fits])
    assert [k.id for k in kept] == ["long", "fits"] and skipped == []
    cut = kept[0]
    assert isinstance(whole, TokenizedExample)
    assert len(cut.input_ids) == 20 and cut.truncated == len(whole.input_ids) - 20
    assert kept[1].truncated == 0
    # the same tokens as the whole encoding with prompt tokens dropped from the left
    head = 1 if whole.input_ids[0] == tokenizer.bos_token_id else 0
    dropped = len(whole.input_ids) - 20
    assert cut.input_ids == whole.input_ids[:head] + whole.input_ids[head + dropped :]
    assert cut.labels == whole.labels[:head] + whole.labels[head + dropped :]
    assert cut.num_target_tokens == whole.num_target_tokens  # the completion is whole


def test_a_long_completion_is_cut_at_its_end(tokenizer):
    (example,) = load_examples([{"id": "c", "prompt": "x", "completion": "y" * 60}])
    whole = ExampleEncoder(tokenizer, 4096, "tulu").encode(example)
    cut = ExampleEncoder(tokenizer, 20, "tulu").encode(example)
    assert isinstance(whole, TokenizedExample) and isinstance(cut, TokenizedExample)
    assert cut.input_ids == whole.input_ids[:20] and cut.labels == whole.labels[:20]
    assert 0 < cut.num_target_tokens < whole.num_target_tokens


def test_an_empty_completion_is_skipped_and_reported(tokenizer):
    examples = load_examples([{"id": "empty", "prompt": "x" * 5 + " ", "completion": ""}])
    kept, skipped = ExampleEncoder(tokenizer, 20, "tulu").encode_all(examples, eos=False)
    assert kept == [] and skipped == [SkippedExample("empty", "the completion is empty")]


def test_chat_template_labels_the_assistant_turns():
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>")
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    (example,) = load_examples([{"prompt": "hi", "completion": "yo"}])
    encoder = ExampleEncoder(tok, 512, "auto")
    assert encoder.template == "chat_template"
    encoded = encoder.encode(example)
    kept = [
        t
        for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
        if label != IGNORE_INDEX
    ]
    assert tok.decode(kept) == "yo</s>"


def test_collate_pads_right_and_masks(tokenizer):
    batch = [TokenizedExample("a", [5, 6, 7], [-100, 6, 7]), TokenizedExample("b", [8], [8])]
    out = collate(batch, pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer whose every ID is written here, so expected IDs are literal."""
    from tokenizers import Regex, processors

    vocab = {
        "<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<|user|>": 4, "<|assistant|>": 5,
        "\n": 6, "Answer": 7, " the": 8, " question": 9, ".": 10, " Passage": 11, ":": 12,
        " Paris": 13, " is": 14, " in": 15, " France": 16, "Question": 17, " Where": 18,
        "?": 19,
    }  # fmt: skip
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?\w+|[^\w\s]|\n"), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    return tok


TYDIQA_TARGET = {
    "id": "tydiqa-en-0",
    "prompt": "<|user|>\nAnswer the question. Passage: Paris is in France.\n"
    "Question: Where is Paris?\n<|assistant|>\nAnswer:",
    "completion": " France",
}
# <s> <|user|> \n Answer the question . Passage : Paris is in France . \n
# Question : Where is Paris ? \n <|assistant|> \n Answer :   | France
TYDIQA_PROMPT_IDS = [1, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 10, 6]
TYDIQA_PROMPT_IDS += [17, 12, 18, 14, 13, 19, 6, 5, 6, 7, 12]


def test_a_tydiqa_target_is_encoded_as_the_reference_evaluation_set(word_tokenizer):
    """Answer template masked, only " France" labelled, no EOS (the reference's eval sets)."""
    (target,) = load_examples([TYDIQA_TARGET])
    encoder = ExampleEncoder(word_tokenizer, 512, "tulu")
    encoded = encoder.encode(target, eos=False)
    assert encoded.input_ids == [*TYDIQA_PROMPT_IDS, 16]
    assert encoded.labels == [IGNORE_INDEX] * len(TYDIQA_PROMPT_IDS) + [16]
    # target_eos / the pool's training encoding: EOS appended and labelled
    with_eos = encoder.encode(target, eos=True)
    assert with_eos.input_ids == [*TYDIQA_PROMPT_IDS, 16, 2]
    assert with_eos.labels == [IGNORE_INDEX] * len(TYDIQA_PROMPT_IDS) + [16, 2]
    assert encoder.encode(target) == with_eos  # pool examples keep EOS by default


def test_a_chat_template_target_ends_at_its_completion():
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>")
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    (example,) = load_examples([{"prompt": "hi", "completion": " yo"}])
    encoded = ExampleEncoder(tok, 512, "chat_template").encode(example, eos=False)
    assert tok.decode(encoded.input_ids) == "[user]hi[assistant] yo"
    labelled = [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab >= 0]
    assert tok.decode(labelled) == " yo"
