"""Malformed but plausible input answers 4xx problem+json, on SQLite and PostgreSQL alike.

One test per class of input that once made a 500: deep nesting, lone UTF-16 surrogates,
integers beyond 64 bits, paths longer than the OS allows, NUL characters, and the minor
ones (blank names, coerced budgets, raw pydantic dumps, a DELETE that did not delete).
Each case states the answer it must get; none may be a 5xx.
"""

from __future__ import annotations

import json

import pytest
from api_fixtures import assert_problem

pytest_plugins = ["api_fixtures"]  # backend_url, model_root, hostile_settings, api

EXAMPLE = {"id": "a", "prompt": "1+1=", "completion": "2"}
DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
def dataset_id(api) -> str:
    answer = api.post("/v1/datasets", json={"name": "pool", "examples": [EXAMPLE]})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def upload_lines(api, *lines: str, name: str = "n"):
    data = "\n".join(lines).encode("utf-8")
    return api.post("/v1/datasets", data={"name": name}, files={"file": ("p.jsonl", data)})


def post_json(api, path: str, raw: str):
    return api.post(path, content=raw.encode(), headers={"content-type": "application/json"})


def test_deeply_nested_json(api, dataset_id, model_root):
    body = '{"name": "n", "examples": [' + DEEP + "]}"
    assert_problem(post_json(api, "/v1/datasets", body), 422, "nested too deeply")
    line = '{"prompt": "a", "completion": "b", "meta": ' + DEEP + "}"
    assert_problem(upload_lines(api, line), 422, "line 1: nested too deeply")
    # parsable, but deeper than any example needs (and than the encoder serves back)
    nested = '{"prompt": "a", "completion": "b", "meta": ' + "[" * 900 + "]" * 900 + "}"
    assert_problem(upload_lines(api, nested), 422, "nested deeper than 32 levels")
    inline = '{"name": "n", "examples": [{"prompt": "a", "completion": "b", "m": ' + "[" * 50
    inline += "]" * 50 + "}]}"
    assert_problem(post_json(api, "/v1/datasets", inline), 422, "nested deeper")
    select = '{"targets": [{"prompt": "a", "completion": "b"}], "top_k": 1, "options": '
    response = post_json(api, f"/v1/datastores/{'0' * 32}/select", select + DEEP + "}")
    assert_problem(response, 400, slug="malformed-body")
    build = {"dataset_id": dataset_id, "model": {"path": str(model_root / "tiny")}}
    build["options"] = {"x": json.loads("[" * 60 + "]" * 60)}
    assert_problem(api.post("/v1/datastores", json=build), 422, "options")


def test_lone_surrogates(api, dataset_id, model_root):
    lone = '{"id": "s", "prompt": "\\ud800", "completion": "b"}'  # valid JSON, not Unicode
    assert_problem(upload_lines(api, lone), 422, "line 1: text is not valid Unicode")
    inline = '{"name": "n", "examples": [' + lone + "]}"
    assert_problem(post_json(api, "/v1/datasets", inline), 422, "not valid Unicode")
    assert_problem(post_json(api, "/v1/datasets", '{"name": "\\udfff", "examples": [{}]}'), 422)
    meta = '{"id": "m", "prompt": "a", "completion": "b", "meta": {"\\ud800": 1}}'
    assert_problem(upload_lines(api, meta), 422, "not valid Unicode")
    target = '{"targets": [{"prompt": "\\ud800", "completion": "b"}], "top_k": 1}'
    response = post_json(api, f"/v1/datastores/{'0' * 32}/select", target)
    assert_problem(response, 422, "not valid Unicode")
    message = '{"targets": [{"messages": [{"role": "assistant", "content": "\\udc00"}]}], '
    response = post_json(api, f"/v1/datastores/{'0' * 32}/select", message + '"top_k": 1}')
    assert response.status_code in (404, 422), response.text
    path = f'{{"dataset_id": "{dataset_id}", "model": {{"path": "{model_root}/\\ud800"}}}}'
    assert_problem(post_json(api, "/v1/datastores", path), 422, "model.path")


@pytest.mark.parametrize("route", ["/v1/datasets", "/v1/datastores", "/v1/datastores/x/selections"])
@pytest.mark.parametrize("name", ["offset", "limit"])
def test_integers_beyond_64_bits(api, route, name):
    for value in (2**63, 2**70, -(2**70), 10**40):
        assert_problem(api.get(route, params={name: value}), 422, name, "invalid-request")
    assert api.get(route.replace("/x/", f"/{'0' * 32}/"), params={name: 1}).status_code in (
        200,
        404,
    )


def test_integers_beyond_64_bits_in_bodies(api, dataset_id, model_root):
    huge = '{"id": 1' + "0" * 5000 + ', "prompt": "a", "completion": "b"}'
    assert_problem(upload_lines(api, huge), 422, "line 1")
    body = {"dataset_id": dataset_id, "model": {"path": str(model_root / "tiny")}}
    for field in ("warmup", "projection"):
        answer = api.post("/v1/datastores", json=body | {field: {"seed": 2**64}})
        assert_problem(answer, 422, f"{field}.seed")
    assert_problem(api.post("/v1/datastores", json=body | {"max_seq_len": 2**80}), 422)
    select = {"targets": [EXAMPLE], "top_k": 2**80}
    assert api.post(f"/v1/datastores/{'0' * 32}/select", json=select).status_code == 404


def test_paths_longer_than_the_os_allows(api, dataset_id, model_root):
    def build(path: str, field: str = "model"):
        body = {"dataset_id": dataset_id, "model": {"path": str(model_root / "tiny")}}
        if field == "model":
            body["model"] = {"path": path}
        else:
            body["warmup_from"] = [path]
        return api.post("/v1/datastores", json=body)

    long_name = str(model_root / ("a" * 300))
    assert_problem(build(long_name), 422, "component longer than 255 bytes")
    assert_problem(build(str(model_root) + "/a" * 2100), 422, "4096")
    assert_problem(build(str(model_root) + "/é" * 1400), 422, "longer than 4096 bytes")
    assert_problem(build(long_name, "warmup"), 422, "warmup_from[0] has a component")
    assert_problem(build("/" + "é" * 200), 422, "component longer than 255 bytes")  # bytes
    assert_problem(api.get("/v1/datasets/" + "a" * 5000), 404, "no dataset")
    assert_problem(api.get(f"/v1/datasets/{dataset_id}/examples/" + "x" * 5000), 404)
    assert_problem(api.get("/v1/datastores/" + "b" * 5000 + "/selections"), 404)


def test_nul_characters(api, dataset_id, model_root, hostile_settings):
    before = sorted(hostile_settings.datasets_dir.iterdir())
    named = {"name": "a\x00b", "examples": [{"prompt": "x", "completion": "y"}]}
    assert_problem(api.post("/v1/datasets", json=named), 422, "control characters")
    files = {"file": ("p.jsonl", json.dumps({"prompt": "new", "completion": "bytes"}))}
    answer = api.post("/v1/datasets", data={"name": "a\x00b"}, files=files)
    assert_problem(answer, 422, "control characters")
    assert sorted(hostile_settings.datasets_dir.iterdir()) == before  # no orphan file
    assert_problem(api.get("/v1/datasets/a%00b"), 404, "no dataset")
    assert_problem(api.get("/v1/datastores/a%00b"), 404, "no datastore")
    assert_problem(api.get("/v1/datastores/a%00b/selections"), 404, "no datastore")
    assert_problem(api.delete("/v1/datastores/%00"), 404, "no datastore")
    assert_problem(api.get(f"/v1/datasets/{dataset_id}/examples/a%00"), 404, "no example")
    body = {"dataset_id": dataset_id, "model": {"path": f"{model_root}/ti\x00ny"}}
    assert_problem(api.post("/v1/datastores", json=body), 422, "NUL")
    body = {"dataset_id": "\x00", "model": {"path": str(model_root / "tiny")}}
    assert_problem(api.post("/v1/datastores", json=body), 404, "no dataset")
    # NUL inside example text is valid Unicode and stays in files, never in a SQL text column
    text = api.post(
        "/v1/datasets",
        json={"name": "nul text", "examples": [{"prompt": "\x00", "completion": "y"}]},
    )
    assert text.status_code == 201, text.text
    stored = api.get(f"/v1/datasets/{text.json()['id']}/examples/0").json()
    assert stored["prompt"] == "\x00"


def test_names_are_trimmed_and_never_blank(api):
    examples = [{"prompt": "x", "completion": "y"}]
    for blank in ("", "   ", "\t\n"):
        assert_problem(api.post("/v1/datasets", json={"name": blank, "examples": examples}), 422)
        files = {"file": ("p.jsonl", json.dumps(examples[0]))}
        assert_problem(api.post("/v1/datasets", data={"name": blank}, files=files), 422)
    assert_problem(api.post("/v1/datasets", json={"name": "x" * 201, "examples": examples}), 422)
    files = {"file": ("p.jsonl", json.dumps(examples[0]))}
    long = api.post("/v1/datasets", data={"name": "x" * 201}, files=files)
    assert_problem(long, 422, "longer than 200")
    stored = api.post("/v1/datasets", json={"name": "  pool  ", "examples": examples})
    assert stored.status_code == 201 and stored.json()["name"] == "pool"


def test_budgets_are_not_coerced_and_exactly_one_is_given(api):
    select = f"/v1/datastores/{'0' * 32}/select"
    for budget in ({"top_k": "5"}, {"top_k": True}, {"top_k": 2.5}, {"fraction": "0.1"}):
        answer = api.post(select, json={"targets": [EXAMPLE]} | budget)
        assert_problem(answer, 422, next(iter(budget)), "invalid-request")
    both = api.post(select, json={"targets": [EXAMPLE], "top_k": 1, "fraction": 0.1})
    assert_problem(both, 422, "exactly one")
    assert api.post(select, json={"targets": [EXAMPLE], "fraction": 1}).status_code == 404
    spec = api.get("/openapi.json").json()["components"]["schemas"]["SelectRequest"]
    assert [branch["required"] for branch in spec["oneOf"]] == [["top_k"], ["fraction"]]


def test_option_errors_are_plain_sentences(api, dataset_id, model_root):
    """The deprecated ``options`` are merged into the body's build fields and checked as
    the body is: a 422 whose detail is a sentence, not pydantic's report."""
    body = {"dataset_id": dataset_id, "model": {"path": str(model_root / "tiny")}}
    unknown = api.post("/v1/datastores", json=body | {"options": {"batch_size": 4, "y": 1}})
    bad_type = api.post("/v1/datastores", json=body | {"options": {"batch_size": "x"}})
    details = [
        assert_problem(unknown, 422, "options: unknown build settings y", "invalid-request"),
        assert_problem(bad_type, 422, "batch_size: ", "invalid-request"),
    ]
    for detail in (d["detail"] for d in details):
        assert "validation error for" not in detail and "errors.pydantic.dev" not in detail
        assert "\n" not in detail


def test_headers_and_framing(api):
    garbage = api.post(
        "/v1/datasets",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "x"},
    )
    assert garbage.status_code < 500
    broken = api.post(
        "/v1/datasets",
        content=b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nxx',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert broken.status_code < 500, broken.text
    assert_problem(
        api.post("/v1/datasets", content=b"\xff\xfe", headers={"content-type": "application/json"}),
        422,
    )
    assert_problem(api.put("/v1/datasets"), 405, slug="method-not-allowed")
    # Allow lists every method of the path (GET and POST are separate routes)
    assert api.request("OPTIONS", "/v1/datasets").headers["allow"] == "GET, POST"
    assert api.request("PUT", f"/v1/datastores/{'0' * 32}").headers["allow"] == "DELETE, GET"
    metrics = api.get("/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(metrics["content"]) == ["text/plain"]
    assert_problem(api.get("/v1/nothing-here"), 404, slug="not-found")


def test_index_factories_are_bounded_before_faiss_sees_them(api, dataset_id, model_root):
    body = {"dataset_id": dataset_id, "model": {"path": str(model_root / "tiny")}}
    for factory, fragment in (
        ("IVF1000000000,Flat", "exceeds"),  # FAISS would allocate 10^9 lists at parse time
        ("PQ64x24", "exceeds 16 bits"),
        ("HNSW100000", "exceeds 512"),
        ("IVF2,Flat", "needs at least 2 training vectors"),  # the pool has one example
        ("NotAnIndex", "FAISS cannot build"),
        ("Flat\x00", "printable ASCII"),
    ):
        answer = api.post("/v1/datastores", json=body | {"options": {"index_factory": factory}})
        assert_problem(answer, 422, fragment)
    assert api.get("/v1/datastores").json()["count"] == 0  # nothing was queued
