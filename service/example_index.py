"""Where each example of a stored dataset starts, so that fetching one is a seek, not a scan.

Dataset files are immutable and content-addressed, so an index built once per file stays
true as long as the file does: it is built only after the file's bytes matched the sha256
recorded at upload, and it is used only while ``stat`` says the file is the one indexed
(inode, size, modification and change time), checked before and after each read. A few
are kept (a million IDs take on the order of 100 MB).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from typing import Any

from gradstore.examples import example_from_record
from gradstore.files import sha256_file
from gradstore.service.errors import DatasetIntegrityError

_KEEP = 4
_indexes: OrderedDict[str, tuple[tuple[int, ...], dict[str, tuple[int, int]]]] = OrderedDict()
_lock = threading.Lock()


def _signature(path: str) -> tuple[int, ...]:
    try:
        stat = os.stat(path)
    except OSError:
        raise DatasetIntegrityError("the dataset's stored file is missing") from None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _scan(path: str) -> dict[str, tuple[int, int]]:
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
                record = json.loads(line)  # validated on upload, and the checksum matched
                offsets[str(record.get("id", line_no))] = (offset, line_no)
            line_no += 1


def example_offsets(path: str, sha256: str) -> tuple[tuple[int, ...], dict[str, tuple[int, int]]]:
    """The index of a dataset file whose bytes match ``sha256``, with the stat it was made at."""
    signature = _signature(path)
    with _lock:
        cached = _indexes.get(path)
        if cached is not None and cached[0] == signature:
            _indexes.move_to_end(path)
            return cached
    if sha256_file(path) != sha256:
        raise DatasetIntegrityError("the dataset's stored file no longer matches its sha256")
    offsets = _scan(path)
    if _signature(path) != signature:
        raise DatasetIntegrityError("the dataset's stored file changed while it was read")
    with _lock:
        _indexes[path] = (signature, offsets)
        while len(_indexes) > _KEEP:
            _indexes.popitem(last=False)
    return signature, offsets


def read_example(path: str, sha256: str, example_id: str) -> dict[str, Any] | None:
    """The stored example as its JSON record, or None when the dataset has no such id."""
    signature, offsets = example_offsets(path, sha256)
    found = offsets.get(example_id)
    if found is None:
        return None
    offset, line_no = found
    with open(path, encoding="utf-8", newline=None) as handle:
        handle.seek(offset)
        line = handle.readline()
    if _signature(path) != signature:
        raise DatasetIntegrityError("the dataset's stored file changed while it was read")
    return example_from_record(json.loads(line), line_no).to_record()
