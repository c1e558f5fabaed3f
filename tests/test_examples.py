import json

import pytest

from gradstore.errors import InvalidExampleError
from gradstore.examples import load_examples, read_jsonl, write_jsonl


def write_lines(tmp_path, lines):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_both_formats_and_keeps_other_fields(tmp_path):
    path = write_lines(
        tmp_path,
        [
            json.dumps({"prompt": "2+2=", "completion": "4", "meta": {"family": "add"}}),
            json.dumps(
                {
                    "dataset": "flan_v2",
                    "id": "flan_v2_7",
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "yo"},
                    ],
                }
            ),
        ],
    )
    first, second = read_jsonl(path)
    assert first.id == "0" and first.extra == {"meta": {"family": "add"}}
    assert second.id == "flan_v2_7" and second.extra == {"dataset": "flan_v2"}
    assert second.messages[1].content == "yo"


def test_integer_ids_become_strings_and_round_trip(tmp_path):
    examples = load_examples([{"id": 7, "prompt": "a", "completion": "b", "subtask": "s"}])
    assert examples[0].id == "7"
    write_jsonl(examples, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == examples


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "x"}', "needs 'messages', or both"),
        ('{"messages": []}', "'messages' is empty"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages.0.role"),
        ('{"prompt": "x", "completion": "y", "messages": []}', "not both"),
        ('{"id": true, "prompt": "x", "completion": "y"}', "'id' must be"),
    ],
)
def test_bad_lines_name_the_line_and_problem(tmp_path, line, message):
    good = json.dumps({"prompt": "a", "completion": "b"})
    path = write_lines(tmp_path, [good, line])
    with pytest.raises(InvalidExampleError) as info:
        read_jsonl(path)
    assert info.value.line == 2  # counted from 1, as editors do: the second line
    assert info.value.detail.startswith(f"{path}:2: ") and message in info.value.detail


def test_duplicate_ids_are_rejected():
    with pytest.raises(InvalidExampleError, match="duplicate id 'a'"):
        load_examples(
            [
                {"id": "a", "prompt": "x", "completion": "y"},
                {"id": "a", "prompt": "p", "completion": "q"},
            ]
        )
