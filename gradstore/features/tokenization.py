"""Turning examples into token IDs with completion-only labels.

Two formats:
- ``tulu``: the plain ``<|system|>/<|user|>/<|assistant|>`` format of Tulu and of the LESS
  reference, reproduced token for token (labels -100 on everything but the assistant
  answers and their EOS; the assistant header is masked too).
- ``chat_template``: the tokenizer's own chat template; each assistant turn is located by
  rendering the conversation up to it.
``auto`` picks the chat template when the tokenizer has one, else ``tulu``.

Pool examples are encoded as the reference trains on them: the completion ends with EOS.
A ``prompt``/``completion`` *target* is encoded as the reference's evaluation sets are
(``encode(eos=False)``): the prompt — answer template such as ``Answer:`` included — is
masked, only the completion is labelled, and no EOS is appended (with a chat template: the
prompt rendered with the generation prompt, the completion appended as text, no end of
turn). Appending EOS to targets measurably moves the ranking away from the reference's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from gradstore.errors import InvalidInputError
from gradstore.examples import Example, Message

IGNORE_INDEX = -100
Template = Literal["auto", "tulu", "chat_template"]


@dataclass(frozen=True)
class TokenizedExample:
    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: int = 0  # tokens cut to fit max_seq_len (prompt from the left, then the end)

    @property
    def num_target_tokens(self) -> int:
        """Tokens in the loss (position 0 never is: nothing precedes it)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass(frozen=True)
class SkippedExample:
    id: str
    reason: str


def tulu_text(messages: Sequence[Message], eos_token: str) -> str:
    """The reference's ``concat_messages``."""
    parts = []
    for message in messages:
        content = message.content.strip()
        if message.role == "assistant":
            parts.append(f"<|assistant|>\n{content}{eos_token}\n")
        else:
            parts.append(f"<|{message.role}|>\n{content}\n")
    return "".join(parts)


class ExampleEncoder:
    """Tokenises examples for one tokenizer, template and length limit."""

    def __init__(self, tokenizer, max_seq_len: int, template: Template = "auto"):
        if tokenizer.eos_token is None:
            raise InvalidInputError("the tokenizer has no EOS token; completions need one")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        if template == "auto":
            template = "chat_template" if getattr(tokenizer, "chat_template", None) else "tulu"
        elif template == "chat_template" and not getattr(tokenizer, "chat_template", None):
            raise InvalidInputError("template 'chat_template' asked for; the tokenizer has none")
        self.template: Literal["tulu", "chat_template"] = template

    def encode(self, example: Example, eos: bool = True) -> TokenizedExample | SkippedExample:
        """Token IDs and labels, or the reason the example cannot be used.

        ``eos=False`` is the target encoding of a prompt/completion pair (module docstring);
        chat ``messages`` are encoded the same way either way.
        """
        if self.template == "tulu":
            if example.messages is None:
                input_ids, labels = self._tulu_prompt_completion(example, eos)
            else:
                input_ids, labels = self._tulu_messages(example.messages)
        elif example.messages is None and not eos:
            input_ids, labels = self._chat_template_prompt_completion(example)
        else:
            input_ids, labels = self._chat_template(_as_messages(example))
        full_length = len(input_ids)
        input_ids, labels = self._fit(input_ids, labels)
        encoded = TokenizedExample(example.id, input_ids, labels, full_length - len(input_ids))
        if encoded.num_target_tokens == 0:
            reason = (
                f"no completion token fits in {self.max_seq_len} tokens"
                if encoded.truncated
                else "the completion is empty"
            )
            return SkippedExample(example.id, reason)
        return encoded

    def _fit(self, input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """At most ``max_seq_len`` tokens, losing prompt tokens before completion tokens.

        Prompt tokens go from the left (a leading BOS stays, and so does the token before
        the first labelled one, which predicts it); if that is not enough, the end is cut.
        A long prompt thus never costs the example its completion, as plain right
        truncation would.
        """
        excess = len(input_ids) - self.max_seq_len
        if excess <= 0:
            return input_ids, labels
        first_label = next(
            (i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels)
        )
        bos = self.tokenizer.bos_token_id
        head = 1 if bos is not None and input_ids[:1] == [bos] else 0
        cut = max(0, min(excess, first_label - 1 - head))
        input_ids = input_ids[:head] + input_ids[head + cut :]
        labels = labels[:head] + labels[head + cut :]
        return input_ids[: self.max_seq_len], labels[: self.max_seq_len]

    def encode_all(
        self, examples: Sequence[Example], eos: bool = True
    ) -> tuple[list[TokenizedExample], list[SkippedExample]]:
        kept: list[TokenizedExample] = []
        skipped: list[SkippedExample] = []
        for example in examples:
            result = self.encode(example, eos)
            if isinstance(result, TokenizedExample):
                kept.append(result)
            else:
                skipped.append(result)
        return kept, skipped

    def _ids(self, text: str, special: bool = True) -> list[int]:
        """The whole text's IDs; ``_fit`` cuts them to the length limit afterwards."""
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _tulu_prompt_completion(self, example: Example, eos: bool) -> tuple[list[int], list[int]]:
        prompt, completion = example.prompt or "", example.completion or ""
        separator = (
            ""
            if prompt.endswith((" ", "\n", "\t")) or completion.startswith((" ", "\n", "\t"))
            else " "
        )
        ending = self.tokenizer.eos_token if eos else ""
        input_ids = self._ids(prompt + separator + completion + ending)
        n_prompt = len(self._ids(prompt))
        labels = [IGNORE_INDEX] * min(n_prompt, len(input_ids)) + input_ids[n_prompt:]
        return input_ids, labels

    def _tulu_messages(self, messages: list[Message]) -> tuple[list[int], list[int]]:
        eos = self.tokenizer.eos_token
        input_ids = self._ids(tulu_text(messages, eos))
        labels = list(input_ids)
        for idx, message in enumerate(messages):
            if message.role == "assistant":
                continue
            start = 0 if idx == 0 else len(self._ids(tulu_text(messages[:idx], eos)))
            so_far = tulu_text(messages[: idx + 1], eos)
            if idx + 1 < len(messages) and messages[idx + 1].role == "assistant":
                so_far += "<|assistant|>\n"
            end = len(self._ids(so_far))
            labels[start:end] = [IGNORE_INDEX] * len(labels[start:end])
        return input_ids, labels

    def _chat_template_prompt_completion(self, example: Example) -> tuple[list[int], list[int]]:
        """The prompt as a user turn with the generation prompt, then the bare completion."""
        prompt = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": example.prompt or ""}],
            tokenize=False,
            add_generation_prompt=True,
        )
        input_ids = self._ids(prompt + (example.completion or ""), special=False)
        n_prompt = len(self._ids(prompt, special=False))
        labels = [IGNORE_INDEX] * min(n_prompt, len(input_ids)) + input_ids[n_prompt:]
        return input_ids, labels

    def _chat_template(self, messages: list[Message]) -> tuple[list[int], list[int]]:
        def render(upto: int, generation_prompt: bool) -> list[int]:
            text = self.tokenizer.apply_chat_template(
                [m.model_dump() for m in messages[:upto]],
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
            return self._ids(text, special=False)

        input_ids = render(len(messages), False)
        labels = [IGNORE_INDEX] * len(input_ids)
        for idx, message in enumerate(messages):
            if message.role != "assistant":
                continue
            start = len(render(idx, True))
            end = len(render(idx + 1, False))
            labels[start:end] = input_ids[start:end]
        return input_ids, labels


def _as_messages(example: Example) -> list[Message]:
    if example.messages is not None:
        return example.messages
    return [
        Message(role="user", content=example.prompt or ""),
        Message(role="assistant", content=example.completion or ""),
    ]


def collate(batch: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: pads get attention 0 and label -100."""
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def pad_token_id(tokenizer) -> int:
    """The pad ID, falling back to EOS (padding never reaches the loss)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def tokenizer_hash(tokenizer, template: str) -> str:
    """Identifies what the tokenizer does to text: vocabulary, specials, template."""
    digest = hashlib.sha256()
    digest.update(template.encode())
    digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr(tokenizer.all_special_tokens).encode())
    digest.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return digest.hexdigest()
