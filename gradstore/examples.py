"""Examples: reading and validating JSON Lines in the formats of the API contract.

An example is either chat ``messages`` or a ``prompt`` + ``completion`` pair. Fields we do
not interpret (``meta``, ``subtask``, ``dataset``, ...) are kept in ``extra`` and never fed
to selection. IDs are strings: the record's ``id`` or, failing that, its 0-based line number
(messages count lines from 1, as editors do).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gradstore.errors import InvalidExampleError, InvalidInputError

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class Example(BaseModel):
    """One training or target example."""

    model_config = ConfigDict(extra="forbid")
    id: str
    messages: list[Message] | None = None
    prompt: str | None = None
    completion: str | None = None
    subtask: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_format(self) -> Example:
        has_pair = self.prompt is not None or self.completion is not None
        if self.messages is not None and has_pair:
            raise ValueError("give either 'messages' or 'prompt'+'completion', not both")
        if self.messages is None:
            if self.prompt is None or self.completion is None:
                raise ValueError("needs 'messages', or both 'prompt' and 'completion'")
        elif not self.messages:
            raise ValueError("'messages' is empty")
        elif not any(m.role == "assistant" for m in self.messages):
            raise ValueError("'messages' has no assistant message to learn from")
        return self

    def text(self) -> str:
        """All text of the example, for lexical baselines (BM25, DSIR)."""
        if self.messages is not None:
            return "\n".join(m.content for m in self.messages)
        return f"{self.prompt}\n{self.completion}"

    def to_record(self) -> dict[str, Any]:
        """The JSON object this example round-trips from."""
        record: dict[str, Any] = {"id": self.id}
        if self.messages is not None:
            record["messages"] = [m.model_dump() for m in self.messages]
        else:
            record["prompt"], record["completion"] = self.prompt, self.completion
        if self.subtask is not None:
            record["subtask"] = self.subtask
        record.update(self.extra)
        return record


_KNOWN = {"id", "messages", "prompt", "completion", "subtask"}
BOM = "\ufeff"
MAX_DEPTH = 32  # nesting of one example's JSON, metadata included


def _check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """Refuse what parses as JSON but cannot be stored or served back: deep nesting (the
    encoder's recursion limit) and lone UTF-16 surrogates (``"\\ud800"``, not UTF-8)."""
    if depth > MAX_DEPTH:
        raise InvalidExampleError(f"nested deeper than {MAX_DEPTH} levels", where=where)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidExampleError(
                "text is not valid Unicode (a lone UTF-16 surrogate)", where=where
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json_value(key, where, depth + 1)
            _check_json_value(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, where, depth + 1)


def example_from_record(record: Any, line: int, where: str | None = None) -> Example:
    """Validate one decoded JSON value. ``line`` (0-based) is its default ID; errors name it
    by ``where`` (default: ``line {line + 1}``, as editors count)."""
    where = where or f"line {line + 1}"
    if not isinstance(record, dict):
        raise InvalidExampleError(
            f"expected a JSON object, got {type(record).__name__}", where=where
        )
    _check_json_value(record, where)
    raw_id = record.get("id", line)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise InvalidExampleError("'id' must be a string or an integer", where=where)
    fields = {k: v for k, v in record.items() if k in _KNOWN}
    fields["id"] = str(raw_id)
    fields["extra"] = {k: v for k, v in record.items() if k not in _KNOWN}
    try:
        return Example.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'example'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidExampleError(problems, where=where) from None


def _numbered_lines(lines: Iterable[str]) -> Iterator[tuple[int, Example]]:
    """(0-based line number, example) of each non-blank line; a leading BOM is dropped."""
    for line_no, raw in enumerate(lines):
        text = raw.removeprefix(BOM) if line_no == 0 else raw
        if text.strip():
            yield line_no, _parse_line(text, line_no)


def _parse_line(raw: str, line_no: int) -> Example:
    where, line = f"line {line_no + 1}", line_no + 1
    bad = next((i for i, c in enumerate(raw) if "\udc80" <= c <= "\udcff"), None)
    if bad is not None:  # a byte that is not UTF-8, kept by errors="surrogateescape"
        byte = ord(raw[bad]) - 0xDC00
        raise InvalidExampleError(
            f"not UTF-8 text (byte 0x{byte:02x} at column {bad + 1}); save the file as UTF-8",
            where,
            line,
        )
    try:
        record = json.loads(raw.rstrip("\r\n"))  # a column past the end names this line
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc.msg} (column {exc.colno})"
        raise InvalidExampleError(problem, where, line) from None
    except RecursionError:
        raise InvalidExampleError("nested too deeply to parse", where, line) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InvalidExampleError(f"not usable JSON ({exc})", where, line) from None
    try:
        return example_from_record(record, line_no, where)
    except InvalidExampleError as error:
        raise InvalidExampleError(error.problem, where, line) from None


def parse_jsonl_lines(lines: Iterable[str]) -> Iterator[Example]:
    """Parse JSON Lines; blank lines are skipped but still counted for default IDs."""
    for _, example in _numbered_lines(lines):
        yield example


def load_examples(records: Iterable[Any]) -> list[Example]:
    """Validate already-decoded records (the inline-JSON API form); IDs must be unique."""
    seen: dict[str, str] = {}
    examples = []
    for i, record in enumerate(records):
        where = f"example {i + 1} of the list"
        example = example_from_record(record, i, where)
        _check_new(seen, example, where)
        examples.append(example)
    return examples


def read_jsonl(path: str | Path) -> list[Example]:
    """Read and validate a JSONL file of examples; IDs must be unique."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[Example]:
    """Examples of a UTF-8 JSONL file one at a time (IDs checked unique as they come); a
    byte-order mark is accepted, and errors read ``file:line: problem``."""
    seen: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as handle:
            for line_no, example in _numbered_lines(handle):
                _check_new(seen, example, f"line {line_no + 1}", line_no + 1)
                yield example
    except InvalidExampleError as error:
        where = f"{path}:{error.line}" if error.line is not None else str(path)
        raise InvalidExampleError(error.problem, where, error.line) from None
    except FileNotFoundError:
        raise InvalidInputError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path} is a directory, not a JSONL file") from None
    except PermissionError:
        raise InvalidInputError(f"{path} cannot be read (permission denied)") from None


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_record(), ensure_ascii=False) + "\n")


def _check_new(seen: dict[str, str], example: Example, where: str, line: int | None = None) -> None:
    if example.id in seen:
        raise InvalidExampleError(
            f"duplicate id {example.id!r}, also on {seen[example.id]}; give every example "
            "its own 'id'",
            where,
            line,
        )
    seen[example.id] = where
