"""Where each example of a stored dataset starts, so that fetching one is a seek, not a scan.

Dataset files are immutable and content-addressed, so an index built once per file stays
true; a few are kept (a million IDs take on the order of 100 MB).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from gradstore.examples import example_from_record


@lru_cache(maxsize=4)
def example_offsets(path: str) -> dict[str, tuple[int, int]]:
    """``{id: (text offset, line number)}``; lines split as ``read_jsonl`` splits them."""
    offsets: dict[str, tuple[int, int]] = {}
    with open(path, encoding="utf-8", newline=None) as handle:
        line_no = 0
        while True:
            offset = handle.tell()
            line = handle.readline()
            if not line:
                return offsets
            if line.strip():
                record = json.loads(line)  # validated on upload
                offsets[str(record.get("id", line_no))] = (offset, line_no)
            line_no += 1


def read_example(path: str, example_id: str) -> dict[str, Any] | None:
    """The stored example as its JSON record, or None when the dataset has no such id."""
    found = example_offsets(path).get(example_id)
    if found is None:
        return None
    offset, line_no = found
    with open(path, encoding="utf-8", newline=None) as handle:
        handle.seek(offset)
        return example_from_record(json.loads(handle.readline()), line_no).to_record()
