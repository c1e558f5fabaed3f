"""What every data-set converter shares: reading a wheel's files while recording which, and
the small parsers the packages' formats need.

A converter is a function of a :class:`WheelReader`; the reader checks each member against
the wheel's ``RECORD`` (:mod:`gradstore.assets.wheels`) and remembers what was read, so the
source record beside a converted file names exactly the files it came from.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradstore.assets.wheels import CorruptAssetError, extract_member, read_member, wheel_members
from gradstore.examples import Example


class WheelReader:
    """One wheel's members, read through RECORD checks; ``members_read`` lists them in order."""

    def __init__(self, wheel: Path):
        self.wheel = wheel
        self.members_read: list[str] = []

    def read(self, member: str) -> bytes:
        data = read_member(self.wheel, member)
        self.members_read.append(member)
        return data

    def text(self, member: str) -> str:
        try:
            return self.read(member).decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorruptAssetError(f"{member} is not UTF-8 text: {error}") from error

    def json(self, member: str) -> Any:
        try:
            return json.loads(self.text(member))
        except json.JSONDecodeError as error:
            raise CorruptAssetError(f"{member} is not valid JSON: {error}") from error

    def jsonl(self, member: str) -> list[Any]:
        return jsonl_records(self.text(member), member)

    def members(self, prefix: str, suffix: str = "") -> list[str]:
        """Member names under ``prefix`` ending in ``suffix``, sorted (read nothing yet)."""
        names = wheel_members(self.wheel)
        return sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))

    @contextmanager
    def extracted(self, member: str) -> Iterator[Path]:
        """A checked temporary copy of a large member on disk, beside the wheel, removed after."""
        with tempfile.TemporaryDirectory(dir=self.wheel.parent, prefix=".extract-") as tmp:
            path = extract_member(self.wheel, member, Path(tmp) / Path(member).name)
            self.members_read.append(member)
            yield path


Converter = Callable[[WheelReader], list[Example]]


def jsonl_records(text: str, member: str) -> list[Any]:
    """JSON Lines split on ``\\n`` only: ``str.splitlines`` would also cut at U+2028 and
    friends, which occur inside the strings of these files."""
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise CorruptAssetError(f"{member} line {number}: not valid JSON: {error}") from error
    return records


def field(record: Any, key: str, member: str) -> Any:
    """``record[key]``, or an error naming the file whose layout is not what we expect."""
    if not isinstance(record, dict) or key not in record:
        raise CorruptAssetError(f"{member}: a record has no {key!r} field")
    return record[key]


def text_field(record: Any, key: str, member: str) -> str:
    value = field(record, key, member)
    if not isinstance(value, str):
        raise CorruptAssetError(f"{member}: {key!r} is not a string")
    return value
