"""The console page and its static files, as debug and production servers serve them."""

import json
import re
import urllib.request
from pathlib import Path

from django.test import Client

from tests.servers import DaphneServer

MODULES = ("console/app.js", "console/api.js", "console/runs.js", "notifications/client.js", "console/console.css")


def test_the_page_is_served_with_a_strict_content_security_policy(db: None) -> None:
    response = Client().get("/")
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    page = response.content.decode()
    # No inline script and nothing from another host.
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert Client().post("/").status_code == 405


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_a_debug_server_serves_the_modules_from_the_apps(daphne: DaphneServer) -> None:
    for path in MODULES:
        status, content_type, body = get(f"{daphne.http_url}/static/{path}")
        assert status == 200 and body, path
        assert content_type.split(";")[0] in {"text/javascript", "application/javascript", "text/css"}, content_type


def test_production_static_files_are_hashed_and_module_imports_follow_the_hashes(
    collected_static: Path, console_server: DaphneServer
) -> None:
    manifest = json.loads((collected_static / "staticfiles.json").read_text())["paths"]
    app = (collected_static / manifest["console/app.js"]).read_text()
    # app.js imports client.js and runs.js by their hashed names, so a cached
    # page never mixes versions.
    assert Path(manifest["notifications/client.js"]).name in app
    assert Path(manifest["console/runs.js"]).name in app
    _, _, page = get(f"{console_server.http_url}/")
    assert f"/static/{manifest['console/app.js']}".encode() in page
    for path in MODULES:
        status, _, body = get(f"{console_server.http_url}/static/{manifest[path]}")
        assert status == 200 and body, path


def test_favicon_requests_go_to_the_console_icon(db: None) -> None:
    response = Client().get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("console/favicon.svg")
