"""Which hosts and web pages may drive the server (server/sites.py), and the middleware that
applies it (http.SiteGuard, BodyLimit, ApiKey) in process: every case of the policy, the
flags, the error shapes. The same rules against the real server and a real browser are in
tests/test_server_safety.py."""

from types import SimpleNamespace

import pytest

from pyfile.runtime.errors import UsageError
from pyfile.runtime.options import parse
from pyfile.runtime.server.sites import SitePolicy


@pytest.mark.parametrize("host, ok", [
    (None, True), ("", True),                                      # HTTP/1.0, no authority
    ("127.0.0.1:8080", True), ("127.0.0.1", True), ("10.1.2.3:80", True),
    ("[::1]:8080", True), ("[fe80::1%25eth0]:8080", True),         # IP literals cannot rebind
    ("localhost:8080", True), ("LOCALHOST.", True), ("app.localhost:3000", True),
    ("ai.lan:8080", True), ("x.corp.example", True),               # --allowed-hosts, patterns
    ("evil.example", False), ("evil.example:8080", False), ("localhost.evil.example", False),
    ("127.0.0.1.evil.example", False), ("corp.example", False),
    ("a b", False), ("evil.example:80:80", False), ("[::1", False), ("user@127.0.0.1", False),
])
def test_host_allow_list(host, ok):
    policy = SitePolicy("127.0.0.1", ["ai.lan", "*.corp.example"])
    assert policy.host_ok(host) is ok


def test_the_host_name_is_allowed_and_a_star_turns_the_check_off():
    assert SitePolicy("myhost.lan").host_ok("myhost.lan:8080")
    assert not SitePolicy("0.0.0.0").host_ok("myhost.lan:8080")
    assert SitePolicy("0.0.0.0", ["*"]).host_ok("anything.example")


@pytest.mark.parametrize("origin, host, ok", [
    ("http://localhost:5173", "127.0.0.1:8080", True),             # the user's own tools
    ("http://127.0.0.1:3000", "127.0.0.1:8080", True),
    ("https://[::1]:8443", "127.0.0.1:8080", True),
    ("http://app.localhost", "127.0.0.1:8080", True),
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True),              # its own web chat
    ("http://192.168.1.5:8080", "192.168.1.5:8080", True),          # its own, on the LAN
    ("http://192.168.1.5:9999", "192.168.1.5:8080", False),         # another port there
    ("http://ai.lan", "ai.lan:80", True),
    ("http://app.example:3000", "127.0.0.1:8080", True),            # --cors-origins
    ("https://x.tools.example", "127.0.0.1:8080", True),            # --cors-origins pattern
    ("http://evil.example", "127.0.0.1:8080", False),
    ("http://app.example:3001", "127.0.0.1:8080", False),
    ("null", "127.0.0.1:8080", False),                              # file:, sandboxed frames
    ("http://localhost.evil.example", "127.0.0.1:8080", False),
    ("chrome-extension://abc", "127.0.0.1:8080", False),
    ("garbage", "127.0.0.1:8080", False), ("http://", "127.0.0.1:8080", False),
])
def test_origin_allow_list(origin, host, ok):
    policy = SitePolicy("127.0.0.1", ["ai.lan"],
                        ["http://app.example:3000", "https://*.tools.example"])
    assert policy.origin_ok(origin, host) is ok


def test_null_and_any_origin_only_when_listed():
    assert SitePolicy("127.0.0.1", [], ["null"]).origin_ok("null", "127.0.0.1:8080")
    assert SitePolicy("127.0.0.1", [], ["*"]).origin_ok("http://evil.example", "x")


def test_flags_and_environment(monkeypatch):
    opts = parse(["--server", "--allowed-hosts", "a.lan,b.lan", "--allowed-hosts", "c.lan",
                  "--cors-origins", "http://app.example:3000"])
    monkeypatch.setenv("PYFILE_ALLOWED_HOSTS", "d.lan")
    monkeypatch.setenv("PYFILE_CORS_ORIGINS", "http://other.example")
    policy = SitePolicy.from_options(opts)
    for name in ("a.lan", "b.lan", "c.lan", "d.lan"):
        assert policy.host_ok(f"{name}:8080"), name
    assert policy.origin_ok("http://app.example:3000", "127.0.0.1:8080")
    assert policy.origin_ok("http://other.example", "127.0.0.1:8080")
    assert SitePolicy.from_options(parse(["--server", "--cors"])).any_origin


def test_a_cors_origin_that_is_not_an_origin_is_a_usage_error():
    with pytest.raises(UsageError, match="--cors-origins 'app.example' is not an origin"):
        parse(["--server", "--cors-origins", "app.example"])


# -- the middleware, in process (no model: a route of its own) ----------------------------------

def app_client(**opts):
    from fastapi.testclient import TestClient
    from pyfile.runtime.server.app import create_app
    base = dict(api_key=None, cors=False, max_body=4096, metrics=True, host="127.0.0.1",
                allowed_hosts=[], cors_origins=[], no_slots=False, temp=0.8, top_k=40,
                top_p=0.95, min_p=0.05)
    base.update(opts)
    app = create_app(SimpleNamespace(opts=SimpleNamespace(**base), runner=None))
    ran = []

    @app.post("/v1/echo")
    @app.post("/v1/messages/echo")
    async def echo(body: dict) -> dict:
        ran.append(body)
        return body

    return TestClient(app, base_url="http://127.0.0.1:8080"), ran


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/json"])
@pytest.mark.parametrize("origin", ["http://evil.example", "null"])
def test_cross_site_requests_are_refused_before_the_route(ctype, origin):
    client, ran = app_client()
    r = client.post("/v1/echo", content=b'{"a": 1}', headers={"Origin": origin,
                                                              "Content-Type": ctype})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers
    assert ran == []


def test_rebinding_host_is_refused_in_each_api_shape():
    client, ran = app_client()
    r = client.post("/v1/echo", json={"a": 1}, headers={"Host": "evil.example:8080"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    r = client.post("/v1/messages/echo", json={"a": 1}, headers={"Host": "evil.example"})
    assert r.status_code == 403
    assert r.json() == {"type": "error", "error": {"type": "permission_error",
                                                   "message": r.json()["error"]["message"]}}
    assert ran == []


def test_allowed_pages_get_cors_headers_naming_them_and_must_send_json():
    client, ran = app_client(cors_origins=["http://app.example:3000"])
    for origin in ("http://localhost:5173", "http://127.0.0.1:8080", "http://app.example:3000"):
        r = client.post("/v1/echo", json={"a": 1}, headers={"Origin": origin})
        assert r.status_code == 200, (origin, r.text)
        assert r.headers["access-control-allow-origin"] == origin
        assert r.headers["vary"] == "Origin"
        assert "access-control-allow-credentials" not in r.headers
        pre = client.options("/v1/echo", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == origin
        assert "authorization" in pre.headers["access-control-allow-headers"]
    r = client.post("/v1/echo", content=b'{"a": 1}', headers={
        "Origin": "http://localhost:5173", "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert len(ran) == 3
    r = client.options("/v1/echo", headers={"Origin": "http://evil.example",
                                            "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("ctype", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_without_an_origin_any_content_type_is_read_as_json(ctype):
    client, ran = app_client()
    r = client.post("/v1/echo", content=b'{"a": 1}',
                    headers={"Content-Type": ctype} if ctype else {})
    assert r.status_code == 200 and r.json() == {"a": 1}


def test_bodies_over_the_limit_are_413_declared_or_chunked():
    client, ran = app_client(max_body=1000)
    r = client.post("/v1/echo", content=b"x" * 2000)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = client.post("/v1/echo", content=iter([b"x" * 400] * 5))  # chunked: no length
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = client.post("/v1/messages/echo", content=iter([b"x" * 400] * 5))
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    r = client.post("/v1/echo", content=iter([b'{"a":', b' 1}']))
    assert r.status_code == 200 and r.json() == {"a": 1}
    assert len(ran) == 1


def test_api_keys_every_key_both_headers_and_no_websocket_without_one():
    from starlette.websockets import WebSocketDisconnect
    client, ran = app_client(api_key="k1", api_keys=["k1", "k2"])
    assert client.post("/v1/echo", json={}).status_code == 401
    assert client.post("/v1/echo", json={}, headers={"Authorization": "Bearer k3"}
                       ).status_code == 401
    assert client.post("/v1/echo", json={}, headers={"Authorization": "Bearer k2"}
                       ).status_code == 200
    assert client.post("/v1/echo", json={}, headers={"x-api-key": "k1"}).status_code == 200
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect("/v1/echo"):
            pass
    assert refused.value.code == 1008  # closed by the key check, before any route
