"""The service as a user starts it: a busy port is one line; /docs needs no internet."""

from __future__ import annotations

import socket

from cli_run import gradstore


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in (["serve", "--workers", "0", "--data-dir", "data"], ["api"]):
            done = gradstore(*command, "--port", str(port), cwd=tmp_path, timeout=60)
            assert (done.returncode, done.stderr.strip().splitlines()) == (
                1,
                [
                    f"error: cannot listen on 127.0.0.1:{port} (Address already in use); stop "
                    "what uses it (another gradstore serve?) or choose another --port"
                ],
            )
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_docs_are_served_from_packaged_files(tmp_path):
    from fastapi.testclient import TestClient

    from gradstore.db.settings import Settings
    from gradstore.service.app import create_app

    app = create_app(Settings(data_dir=tmp_path / "data"))
    with TestClient(app) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "cdn" not in page.text.lower() and "https://" not in page.text.split("<body>")[1]
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert f"/docs-assets/{asset}" in page.text
            served = client.get(f"/docs-assets/{asset}")
            assert served.status_code == 200 and len(served.content) > 10_000
