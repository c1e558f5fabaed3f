"""The typed client: requests it sends, answers it parses, errors it raises, polling.

Most tests run the client against ``FakeGradstore``, a small in-memory server function
behind ``httpx.MockTransport``. That fake is acceptable only here, for client unit tests: it
validates what the client sends with the service's own request schemas and shapes its
answers with the service's response schemas, so the contract cannot drift unnoticed. The
last test drives the real FastAPI app over uvicorn with the same client.
"""

from __future__ import annotations

import email.parser
import json
import threading
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from gradstore.api_models import (
    DatasetCreate,
    DatasetPublic,
    DatastoreCreate,
    DatastorePublic,
    SelectRequest,
    SelectResponse,
)
from gradstore.client import (
    Datastore,
    DatastoreBuildError,
    GradstoreAPIError,
    GradstoreClient,
)
from gradstore.config import LoraConfig
from gradstore.examples import Example

PROBLEM = "application/problem+json"
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def problem(status: int, title: str, detail: str) -> httpx.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return httpx.Response(status, content=json.dumps(body), headers={"content-type": PROBLEM})


def multipart_fields(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """Parse a multipart/form-data body: field name -> (filename, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + request.content)
    fields = {}
    for part in message.get_payload():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True))
    return fields


class FakeGradstore:
    """Contract-shaped answers of API v1; each datastore walks through ``script`` statuses."""

    def __init__(self, api_key: str | None = None, script=("queued", "featurize", "ready")):
        self.api_key = api_key
        self.script = list(script)
        self.requests: list[httpx.Request] = []
        self.datasets: dict[str, dict] = {}
        self.polls: dict[str, int] = {}

    def dataset(self, name: str, count: int) -> dict:
        dataset_id = uuid.uuid4().hex
        record = {"id": dataset_id, "name": name, "num_examples": count, "sha256": "0" * 64}
        self.datasets[dataset_id] = DatasetPublic(**record, created_at=NOW).model_dump(mode="json")
        return self.datasets[dataset_id]

    def datastore(self, datastore_id: str, status: str) -> dict:
        done = {"queued": 0, "warmup": 1, "featurize": 24, "index": 1, "ready": 48}.get(status, 3)
        total = {"warmup": 2, "index": 1}.get(status, 48)
        body = DatastorePublic(
            id=datastore_id,
            dataset_id="d1",
            status=status,
            progress={
                "stage": status,
                "done": done,
                "total": total,
                "examples_per_s": 12.5,
                "eta_s": 2.0,
            },
            checkpoints=[{"index": 0, "learning_rate": 0.6}, {"index": 1, "learning_rate": 0.4}],
            num_examples=48 if status == "ready" else None,
            dim=256 if status == "ready" else None,
            error="CUDA out of memory" if status == "failed" else None,
            created_at=NOW,
        ).model_dump(mode="json")
        return body | {"added_by_a_newer_server": True}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if path in ("/healthz", "/readyz"):
            return httpx.Response(200, json={"status": "ok" if path == "/healthz" else "ready"})
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return problem(401, "Unauthorized", "a valid API key is required")
        parts = path.strip("/").split("/")
        if parts[:2] == ["v1", "datasets"]:
            return self._datasets(request, parts[2:])
        if parts[:2] == ["v1", "datastores"]:
            return self._datastores(request, parts[2:])
        return problem(404, "Not found", f"{method} {path}")

    def _datasets(self, request: httpx.Request, rest: list[str]) -> httpx.Response:
        if request.method == "POST" and not rest:
            if request.headers["content-type"].startswith("multipart/form-data"):
                fields = multipart_fields(request)
                lines = fields["file"][1].decode().splitlines()
                return httpx.Response(
                    201, json=self.dataset(fields["name"][1].decode(), len(lines))
                )
            body = DatasetCreate.model_validate_json(request.content)
            return httpx.Response(201, json=self.dataset(body.name, len(body.examples)))
        if request.method == "GET" and not rest:
            data = list(self.datasets.values())
            offset = int(request.url.params["offset"])
            limit = int(request.url.params["limit"])
            return httpx.Response(200, json={"data": data[offset : offset + limit], "count": 3})
        if rest[0] not in self.datasets:
            return problem(404, "Not found", f"no dataset with id {rest[0]!r}")
        if len(rest) == 1:
            return httpx.Response(200, json=self.datasets[rest[0]])
        example_id = request.url.raw_path.decode().rsplit("/", 1)[1]  # still percent-encoded
        return httpx.Response(
            200, json={"id": example_id, "prompt": "2+2=", "completion": "4", "family": "add"}
        )

    def _datastores(self, request: httpx.Request, rest: list[str]) -> httpx.Response:
        if request.method == "POST" and not rest:
            DatastoreCreate.model_validate_json(request.content)
            return httpx.Response(202, json=self.datastore("s1", "queued"))
        if request.method == "GET" and not rest:
            data = [self.datastore("s1", "ready"), self.datastore("s2", "warmup")]
            return httpx.Response(200, json={"data": data, "count": 2})
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.method == "POST" and rest[1:] == ["select"]:
            body = SelectRequest.model_validate_json(request.content)
            selected = [
                {"id": "ex-7", "score": 0.9, "subtask": body.targets[0].subtask},
                {"id": "ex-2", "score": 0.5, "subtask": body.targets[0].subtask},
            ][: body.top_k or 2]
            answer = SelectResponse(
                datastore_id=rest[0],
                method=body.method,
                selected=selected,
                num_candidates=48,
                timings_ms={"total": 3.5},
            )
            return httpx.Response(200, json=answer.model_dump(mode="json"))
        poll = self.polls[rest[0]] = self.polls.get(rest[0], -1) + 1
        return httpx.Response(
            200, json=self.datastore(rest[0], self.script[min(poll, len(self.script) - 1)])
        )


@pytest.fixture
def fake() -> FakeGradstore:
    return FakeGradstore(api_key="secret")


@pytest.fixture
def client(fake):
    with GradstoreClient(
        "http://gradstore.test", api_key="secret", transport=httpx.MockTransport(fake)
    ) as client:
        yield client


def test_inline_dataset_is_json_and_returns_a_typed_record(client, fake):
    examples = [
        {"id": "a", "prompt": "1+1=", "completion": "2"},
        Example(
            id="b",
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            extra={"family": "greet"},
        ),
    ]
    dataset = client.create_dataset("pool", examples=examples)
    sent = fake.requests[-1]
    assert (sent.method, sent.url.path) == ("POST", "/v1/datasets")
    assert sent.headers["authorization"] == "Bearer secret"
    body = json.loads(sent.content)
    assert body["name"] == "pool" and body["examples"][1]["family"] == "greet"
    assert dataset.num_examples == 2 and dataset.name == "pool"
    assert dataset.created_at == NOW and client.get_dataset(dataset.id) == dataset


def test_file_dataset_is_a_multipart_upload(client, fake, tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
    dataset = client.create_dataset("from file", path=path)
    fields = multipart_fields(fake.requests[-1])
    assert fields["name"] == (None, b"from file")
    assert fields["file"] == ("pool.jsonl", path.read_bytes())
    assert dataset.num_examples == 2
    with pytest.raises(ValueError, match="exactly one"):
        client.create_dataset("both", examples=[], path=path)
    with pytest.raises(ValueError, match="exactly one"):
        client.create_dataset("neither")


def test_listing_paginates_and_example_ids_are_escaped(client, fake):
    first = client.create_dataset("p", examples=[{"prompt": "a", "completion": "b"}])
    client.create_dataset("q", examples=[{"prompt": "a", "completion": "b"}])
    page = client.list_datasets(limit=1, offset=1)
    assert fake.requests[-1].url.params == httpx.QueryParams({"limit": "1", "offset": "1"})
    assert page.count == 3 and [d.name for d in page.data] == ["q"]
    example = client.get_example(first.id, "what? #1")
    assert fake.requests[-1].url.raw_path.endswith(b"/examples/what%3F%20%231")
    assert example.prompt == "2+2=" and example.model_extra == {"family": "add"}


def test_create_datastore_sends_only_what_was_given(client, fake):
    store = client.create_datastore("d1", "/models/tiny")
    assert json.loads(fake.requests[-1].content) == {
        "dataset_id": "d1",
        "model": {"path": "/models/tiny"},
    }
    assert isinstance(store, Datastore) and store.status == "queued"
    assert store.model_extra == {"added_by_a_newer_server": True} and store.created_at == NOW

    client.create_datastore(
        "d1",
        "/models/tiny",
        lora=LoraConfig(r=4, alpha=16),
        warmup={"epochs": 2},
        projection={"dim": 256, "seed": 1},
        max_seq_len=64,
        warmup_from=["/ckpt/1"],
        shard_size=12,
        dtype="float32",
    )
    body = json.loads(fake.requests[-1].content)
    assert body["lora"] == {"r": 4, "alpha": 16.0, "dropout": 0.1, "target_modules": None}
    assert body["warmup"] == {"epochs": 2} and body["projection"] == {"dim": 256, "seed": 1}
    assert body["max_seq_len"] == 64 and body["warmup_from"] == ["/ckpt/1"]
    assert body["shard_size"] == 12 and body["dtype"] == "float32" and "options" not in body


def test_datastore_get_list_delete(client, fake):
    page = client.list_datastores(limit=10)
    assert [(s.id, s.status) for s in page.data] == [("s1", "ready"), ("s2", "warmup")]
    assert page.data[0].checkpoints[1].learning_rate == 0.4 and page.data[0].dim == 256
    store = client.get_datastore("s9")
    assert (fake.requests[-1].method, fake.requests[-1].url.path) == ("GET", "/v1/datastores/s9")
    assert store.progress.stage == "queued" and store.progress.total == 48
    assert client.delete_datastore("s9") is None
    assert (fake.requests[-1].method, fake.requests[-1].url.path) == (
        "DELETE",
        "/v1/datastores/s9",
    )


def test_select_sends_targets_and_parses_the_ranking(client, fake):
    target = Example(id="t", prompt="3+4=", completion="7", subtask="math", extra={"x": 1})
    result = client.select("s1", [target], top_k=1, options={"checkpoints": [0]})
    sent = fake.requests[-1]
    assert (sent.method, sent.url.path) == ("POST", "/v1/datastores/s1/select")
    assert json.loads(sent.content) == {
        "targets": [  # as a dataset example goes: its metadata too
            {"id": "t", "prompt": "3+4=", "completion": "7", "subtask": "math", "x": 1}
        ],
        "method": "less",
        "top_k": 1,
        "options": {"checkpoints": [0]},
    }
    assert [(s.id, s.score, s.subtask) for s in result.selected] == [("ex-7", 0.9, "math")]
    assert result.num_candidates == 48 and result.timings_ms == {"total": 3.5}
    client.select("s1", [{"subtask": "m", "prompt": "a", "completion": "b"}], "bm25", fraction=0.5)
    assert json.loads(fake.requests[-1].content)["fraction"] == 0.5


def test_problem_json_becomes_an_api_error(fake):
    with GradstoreClient("http://gradstore.test", transport=httpx.MockTransport(fake)) as anon:
        assert "authorization" not in anon._http.headers
        with pytest.raises(GradstoreAPIError) as caught:
            anon.list_datasets()
    error = caught.value
    assert (error.status, error.title, error.type) == (401, "Unauthorized", "about:blank")
    assert error.detail == "a valid API key is required" and "401" in str(error)


def test_missing_resource_and_non_json_errors(client):
    with pytest.raises(GradstoreAPIError, match="no dataset with id 'nope'") as caught:
        client.get_dataset("nope")
    assert caught.value.status == 404

    def gateway(request):
        return httpx.Response(502, text="upstream down\n")

    broken = GradstoreClient("http://x", transport=httpx.MockTransport(gateway))
    with broken, pytest.raises(GradstoreAPIError) as caught:
        broken.health()
    assert (caught.value.status, caught.value.title) == (502, "Bad Gateway")
    assert caught.value.detail == "upstream down"


def test_health_and_readiness(client):
    assert client.health().status == "ok" and client.ready().status == "ready"

    def not_ready(request):
        return problem(503, "Not ready", "database unreachable: refused")

    down = GradstoreClient("http://x", transport=httpx.MockTransport(not_ready))
    with down, pytest.raises(GradstoreAPIError, match="database unreachable") as caught:
        down.ready()
    assert caught.value.status == 503


def test_wait_until_ready_polls_through_the_stages(fake, capsys):
    fake.script = ["queued", "warmup", "featurize", "featurize", "index", "ready"]
    with GradstoreClient(
        "http://x", api_key="secret", transport=httpx.MockTransport(fake)
    ) as client:
        store = client.wait_until_ready("s1", timeout=30, poll_interval=0.0, progress=True)
    assert store.status == "ready" and fake.polls["s1"] == 5
    bar = capsys.readouterr().err
    assert "featurize" in bar and "48/48" in bar
    # the rate is the service's (12.5), shown while building; no rate of tqdm's own, which
    # would divide the jump between two polls by the time between them
    states = [state.strip() for state in bar.replace("\r", "\n").splitlines() if state.strip()]
    assert any(s.endswith(", 12.5 ex/s]") for s in states if " featurize:" in s), states
    assert states[-1].startswith("s1 ready: 100%|") and states[-1].endswith("48/48 [00:00]")
    assert not any("ex/s" in s for s in states if " ready:" in s)


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_wait_until_ready_raises_when_the_build_ends_badly(fake, status):
    fake.script = ["queued", "warmup", status]
    with (
        GradstoreClient(
            "http://x", api_key="secret", transport=httpx.MockTransport(fake)
        ) as client,
        pytest.raises(DatastoreBuildError, match=status) as caught,
    ):
        client.wait_until_ready("s1", poll_interval=0.0, progress=False)
    assert caught.value.datastore.status == status and fake.polls["s1"] == 2
    if status == "failed":
        assert "CUDA out of memory" in str(caught.value)


def test_wait_until_ready_times_out(fake):
    fake.script = ["featurize"]
    with (
        GradstoreClient(
            "http://x", api_key="secret", transport=httpx.MockTransport(fake)
        ) as client,
        pytest.raises(TimeoutError, match="still featurize"),
    ):
        client.wait_until_ready("s1", timeout=0.05, poll_interval=0.01, progress=False)
    assert fake.polls["s1"] >= 2


@pytest.fixture
def live_api(tmp_path):
    """The real FastAPI app on a migrated SQLite database, served by uvicorn on a free port."""
    import uvicorn

    from gradstore.db.settings import Settings
    from gradstore.migrations import upgrade
    from gradstore.service.app import create_app

    settings = Settings(data_dir=tmp_path / "data", api_keys="k1,k2")
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_client_against_the_real_service(live_api, toy_pool_file, tiny_model_dir):
    with GradstoreClient(live_api, api_key="k2", timeout=30) as client:
        assert client.health().status == "ok" and client.ready().status == "ready"
        uploaded = client.create_dataset("pool", path=toy_pool_file)
        inline = client.create_dataset(
            "inline", examples=[{"id": "a", "prompt": "1", "completion": "2"}]
        )
        assert uploaded.num_examples == 48 and inline.num_examples == 1
        assert [d.id for d in client.list_datasets(limit=1, offset=1).data] == [inline.id]
        assert client.get_example(uploaded.id, "add-00000").prompt
        with pytest.raises(GradstoreAPIError, match="not a local directory") as caught:
            client.create_datastore(uploaded.id, "/no/such/model")
        assert caught.value.status == 422
        config_only = tiny_model_dir.parent / "config-only"
        config_only.mkdir(exist_ok=True)
        (config_only / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
        with pytest.raises(GradstoreAPIError, match="has no weights") as caught:
            client.create_datastore(uploaded.id, config_only)
        assert caught.value.status == 422
        store = client.create_datastore(
            uploaded.id, tiny_model_dir, lora={"r": 4, "alpha": 16}, shard_size=12
        )
        assert store.status == "queued" and client.get_datastore(store.id).id == store.id
        assert [s.id for s in client.list_datastores().data] == [store.id]
        # the targets file a user has (meta and all) passes the request's checks
        target = {"subtask": "m", "prompt": "1", "completion": "2", "meta": {"family": "add"}}
        with pytest.raises(GradstoreAPIError, match="not ready") as caught:
            client.select(store.id, [target], top_k=1)
        assert caught.value.status == 409
        client.delete_datastore(store.id)
        with pytest.raises(GradstoreAPIError) as caught:  # removed at once, build cancelled
            client.get_datastore(store.id)
        assert caught.value.status == 404
    with GradstoreClient(live_api) as anonymous, pytest.raises(GradstoreAPIError) as caught:
        anonymous.list_datastores()
    assert caught.value.status == 401 and "API key" in caught.value.detail
