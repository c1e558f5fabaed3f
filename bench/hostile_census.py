"""Send a catalogue of hostile requests to a running service and count the answers by class.

The classes are those of issue 8: deep nesting, lone UTF-16 surrogates, integers beyond 64
bits, paths and names longer than the OS allows, NUL characters, and the minor ones (blank
names, coerced budgets, broken framing, unknown methods). Every request is sent on one
keep-alive connection, so a server that resets it after a 500 shows as transport errors.

    python bench/hostile_census.py --url http://127.0.0.1:8000 --api-key KEY \\
        --dataset-id ID --datastore-id ID --model-path /models/tiny

Prints one JSON object: per class, the number of requests and answers by status class.
docs/reliability.md has the figures before and after the hardening.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict

import httpx

DEPTHS = (33, 100, 500, 900, 1000, 5000, 50000)
SURROGATES = ("\ud800", "\udfff", "a\udc00b", "\ud83d")
HUGE = (2**31, 2**63, 2**64, 2**70, -(2**70), 10**40)
NUL = ("\x00", "a\x00b")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def dumps(value) -> bytes:
    return json.dumps(value).encode()  # ASCII: lone surrogates travel as \\udXXX escapes


def catalogue(dataset: str, store: str, model: str):
    """(class, method, path, keyword arguments of httpx.request)."""
    json_type = {"content-type": "application/json"}
    select = f"/v1/datastores/{store}/select"

    def target(**fields):
        return {"targets": [{"prompt": "1+1=", "completion": "2"} | fields], "top_k": 3}

    for depth in DEPTHS:
        deep = nested(depth)
        line = '{"prompt": "a", "completion": "b", "meta": ' + deep + "}"
        yield (
            "nesting",
            "POST",
            "/v1/datasets",
            {
                "content": ('{"name": "n", "examples": [' + line + "]}").encode(),
                "headers": json_type,
            },
        )
        yield (
            "nesting",
            "POST",
            "/v1/datasets",
            {
                "data": {"name": "n"},
                "files": {"file": ("p.jsonl", line.encode())},
            },
        )
        yield "nesting", "POST", select, {
            "content": ('{"targets": [{"prompt": "a", "completion": "b"}], "top_k": 1, '
                        '"options": {"x": ' + deep + "}}").encode(),
            "headers": json_type,
        }  # fmt: skip
        build = json.dumps({"dataset_id": dataset, "model": {"path": model}, "options": {"x": 0}})
        yield (
            "nesting",
            "POST",
            "/v1/datastores",
            {
                "content": build.replace('{"x": 0}', '{"x": ' + deep + "}").encode(),
                "headers": json_type,
            },
        )

    for text in SURROGATES:
        record = {"id": "s", "prompt": "p", "completion": "c"}
        for field in ("id", "prompt", "completion"):
            line = dumps(record | {field: text})
            yield (
                "surrogates",
                "POST",
                "/v1/datasets",
                {"data": {"name": "n"}, "files": {"file": ("p.jsonl", line)}},
            )
            yield (
                "surrogates",
                "POST",
                "/v1/datasets",
                {
                    "content": dumps({"name": "n", "examples": [record | {field: text}]}),
                    "headers": json_type,
                },
            )
        meta = dumps(record | {"meta": {text: text}})
        yield (
            "surrogates",
            "POST",
            "/v1/datasets",
            {"data": {"name": "n"}, "files": {"file": ("p.jsonl", meta)}},
        )
        yield (
            "surrogates",
            "POST",
            "/v1/datasets",
            {"content": dumps({"name": text, "examples": [record]}), "headers": json_type},
        )
        for fields in ({"prompt": text}, {"completion": text}, {"subtask": text}, {"id": text}):
            yield (
                "surrogates",
                "POST",
                select,
                {"content": dumps(target(**fields)), "headers": json_type},
            )
        messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "x"}]
        body = {"targets": [{"messages": messages}], "top_k": 3}
        yield "surrogates", "POST", select, {"content": dumps(body), "headers": json_type}
        body = {"targets": [{"prompt": "a", "completion": "b"}], "top_k": 3, "method": text}
        yield "surrogates", "POST", select, {"content": dumps(body), "headers": json_type}
        for build in (
            {"model": {"path": model + "/" + text}},
            {"model": {"path": model}, "warmup_from": ["/" + text]},
            {"model": {"path": model}, "options": {text: 1}},
        ):
            body = {"dataset_id": dataset} | build
            yield (
                "surrogates",
                "POST",
                "/v1/datastores",
                {"content": dumps(body), "headers": json_type},
            )

    for number in HUGE:
        for route in ("/v1/datasets", "/v1/datastores", f"/v1/datastores/{store}/selections"):
            for name in ("offset", "limit"):
                yield "big integers", "GET", route, {"params": {name: number}}
        for fields in ({"top_k": number}, {"top_k": 1, "options": {"seed": number}}):
            body = {"targets": [{"prompt": "a", "completion": "b"}]} | fields
            yield "big integers", "POST", select, {"content": dumps(body), "headers": json_type}
        for build in (
            {"warmup": {"seed": number}},
            {"projection": {"seed": number}},
            {"projection": {"dim": number}},
            {"lora": {"r": number}},
            {"max_seq_len": number},
            {"options": {"batch_size": number}},
            {"options": {"shard_size": number}},
            {"warmup": {"batch_size": number}},
        ):
            body = {"dataset_id": dataset, "model": {"path": model}} | build
            yield (
                "big integers",
                "POST",
                "/v1/datastores",
                {"content": dumps(body), "headers": json_type},
            )
    line = b'{"id": 1' + b"0" * 5000 + b', "prompt": "a", "completion": "b"}'
    yield (
        "big integers",
        "POST",
        "/v1/datasets",
        {"data": {"name": "n"}, "files": {"file": ("p", line)}},
    )

    for length in (255, 256, 1000, 5000):
        for field in ("model", "warmup_from"):
            path = "/" + "a" * length
            build = (
                {"model": {"path": path}}
                if field == "model"
                else {"model": {"path": model}, "warmup_from": [path]}
            )
            body = {"dataset_id": dataset} | build
            yield (
                "long paths",
                "POST",
                "/v1/datastores",
                {"content": dumps(body), "headers": json_type},
            )
    for total in (4095, 4097, 10000):
        body = {"dataset_id": dataset, "model": {"path": "/a" * (total // 2)}}
        yield "long paths", "POST", "/v1/datastores", {"content": dumps(body), "headers": json_type}
    for length in (64, 300, 5000):
        name = "b" * length
        for path in (
            f"/v1/datasets/{name}",
            f"/v1/datasets/{dataset}/examples/{name}",
            f"/v1/datastores/{name}",
            f"/v1/datastores/{name}/selections",
        ):
            yield "long paths", "GET", path, {}
        yield (
            "long paths",
            "POST",
            "/v1/datasets",
            {
                "data": {"name": name},
                "files": {"file": ("p", b'{"prompt": "a", "completion": "b"}')},
            },
        )

    for text in NUL:
        encoded = text.replace("\x00", "%00")
        yield (
            "nul",
            "POST",
            "/v1/datasets",
            {
                "content": dumps({"name": text, "examples": [{"prompt": "a", "completion": "b"}]}),
                "headers": json_type,
            },
        )
        yield (
            "nul",
            "POST",
            "/v1/datasets",
            {
                "data": {"name": text},
                "files": {"file": ("p", b'{"prompt": "a", "completion": "b"}')},
            },
        )
        for path in (
            f"/v1/datasets/{encoded}",
            f"/v1/datastores/{encoded}",
            f"/v1/datastores/{encoded}/selections",
            f"/v1/datasets/{dataset}/examples/{encoded}",
        ):
            yield "nul", "GET", path, {}
        yield "nul", "DELETE", f"/v1/datastores/{encoded}", {}
        for build in (
            {"model": {"path": model + text}},
            {"model": {"path": model}, "warmup_from": [text]},
            {"dataset_id": text, "model": {"path": model}},
        ):
            body = {"dataset_id": dataset} | build
            yield "nul", "POST", "/v1/datastores", {"content": dumps(body), "headers": json_type}
        for fields in ({"id": text}, {"subtask": text}, {"prompt": text}):
            yield "nul", "POST", select, {"content": dumps(target(**fields)), "headers": json_type}
        line = dumps({"id": text, "prompt": text, "completion": "b"})
        yield "nul", "POST", "/v1/datasets", {"data": {"name": "n"}, "files": {"file": ("p", line)}}

    for name in ("", " ", "\t\n", "x" * 201):
        yield (
            "minor",
            "POST",
            "/v1/datasets",
            {
                "content": dumps({"name": name, "examples": [{"prompt": "a", "completion": "b"}]}),
                "headers": json_type,
            },
        )
        yield (
            "minor",
            "POST",
            "/v1/datasets",
            {
                "data": {"name": name},
                "files": {"file": ("p", b'{"prompt": "a", "completion": "b"}')},
            },
        )
    for budget in (
        {"top_k": "5"},
        {"top_k": True},
        {"top_k": 2.5},
        {"fraction": "0.1"},
        {"top_k": 1, "fraction": 0.1},
        {},
    ):
        body = {"targets": [{"prompt": "a", "completion": "b"}]} | budget
        yield "minor", "POST", select, {"content": dumps(body), "headers": json_type}
    for headers in (
        {"content-type": "multipart/form-data; boundary=b"},
        {"content-type": "text/plain"},
    ):
        yield "minor", "POST", "/v1/datasets", {"content": b"{}", "headers": headers}
    for factory in ("IVF1000000000,Flat", "PQ64x24", "NotAnIndex", "IVF2,Flat"):
        body = {
            "dataset_id": dataset,
            "model": {"path": model},
            "options": {"index_factory": factory},
        }
        yield "minor", "POST", "/v1/datastores", {"content": dumps(body), "headers": json_type}
    for method in ("PUT", "PATCH", "OPTIONS", "TRACE"):
        yield "minor", method, "/v1/datasets", {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--dataset-id", required=True)
    parser.add_argument("--datastore-id", required=True)
    parser.add_argument("--model-path", required=True)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    counts: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, set] = defaultdict(set)
    with httpx.Client(base_url=args.url, headers=headers, timeout=120) as client:
        for kind, method, path, kwargs in catalogue(
            args.dataset_id, args.datastore_id, args.model_path
        ):
            try:
                status = client.request(method, path, **kwargs).status_code
                counts[kind][f"{status // 100}xx"] += 1
                if status >= 500:
                    examples[kind].add(f"{method} {path[:60]}")
            except httpx.HTTPError as exc:
                counts[kind][type(exc).__name__] += 1
    total = Counter()
    for counter in counts.values():
        total.update(counter)
    result = {kind: dict(c) for kind, c in counts.items()} | {"total": dict(total)}
    result["5xx examples"] = {kind: sorted(e)[:5] for kind, e in examples.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
