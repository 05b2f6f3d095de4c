"""Only the page the user opened may drive the studio (issue 16, part B).

Each test sends what another web site could make a browser send to a real `midigen studio` on
127.0.0.1 (a rebinding page's Host, a cross-site form's Origin and text/plain body, no token or a
wrong one) and checks the one-line refusal, and that nothing changed. The page's own requests from
Chromium are the browser tests (tests/test_studio_browser.py), which open the tokened address.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from songgen import make_song_bytes
from studio_server import ROOT, Server, call, tiny_checkpoint

EVIL = "http://evil.example.com"


@pytest.fixture(scope="module")
def ckpt(tiny_dataset, tmp_path_factory):
    return tiny_checkpoint(tiny_dataset, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    s = Server(ckpt, tmp_path_factory.mktemp("studio-security-ws"))
    yield s
    s.stop()


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def cookie(server, value=None) -> dict:
    return {"Cookie": f"midigen-studio-{port_of(server)}={value or server.token}"}


def names(server) -> list[str]:
    status, pieces = call("GET", server.url + "/api/pieces")
    assert status == 200
    return sorted(p["name"] for p in pieces)


def one_line(body) -> str:
    text = body["detail"] if isinstance(body, dict) else body.decode()
    assert text.strip() and "\n" not in text.strip(), text
    return text


def test_the_address_printed_carries_a_fresh_token(server):
    assert server.page_url.startswith(server.url + "/?token=")
    assert len(server.token) >= 32


@pytest.mark.parametrize("path", ["/", "/api/pieces", "/static/studio.js"])
def test_a_host_not_allowed_gets_403_even_with_the_token(server, path):
    """DNS rebinding: the attacker's own name resolving to 127.0.0.1; the request carries that name."""
    port = port_of(server)
    for host in (f"evil.example.com:{port}", "evil.example.com", f"127.0.0.1:{port + 1}", f"localhost.evil:{port}"):
        status, body = call("GET", server.url + path, headers={"Host": host})
        assert status == 403 and "not allowed" in one_line(body), (host, status, body)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        assert call("GET", server.url + path, headers={"Host": host})[0] == 200, host


def test_without_the_token_every_route_is_401_and_a_wrong_one_403(server):
    for path in ("/", "/api/pieces", "/api/info", "/static/studio.js", "/openapi.json", "/docs"):
        status, body = call("GET", server.url + path, token=False)
        assert status == 401 and "token" in one_line(body), (path, status)
        status, body = call("GET", server.url + path, headers={"Authorization": "Bearer " + "x" * 43})
        assert status == 403 and "wrong" in one_line(body), (path, status)
        status, body = call("GET", server.url + path, token=False, headers=cookie(server, "not-it"))
        assert status == 403, (path, status)
    assert call("GET", server.url + "/?token=not-it", token=False)[0] == 403
    before = names(server)
    assert call("POST", server.url + "/api/pieces", {"name": "no token"}, token=False,
                headers={"Origin": server.url})[0] == 401
    assert names(server) == before


def test_the_page_load_with_the_token_sets_a_strict_httponly_cookie_that_then_suffices(server):
    import urllib.request

    with urllib.request.urlopen(server.page_url, timeout=30) as res:
        assert res.status == 200 and b"studio.js" in res.read()
        set_cookie = res.headers["Set-Cookie"]
    name, _, rest = set_cookie.partition("=")
    assert name == f"midigen-studio-{port_of(server)}" and rest.startswith(server.token + ";")
    flags = {f.strip().lower() for f in rest.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags, flags
    assert call("GET", server.url + "/api/pieces", token=False, headers=cookie(server))[0] == 200
    status, piece = call("POST", server.url + "/api/pieces", {"name": "from the page"}, token=False,
                         headers={**cookie(server), "Origin": server.url})
    assert status == 201 and piece["name"] == "from the page"


def test_a_cross_origin_request_that_changes_something_gets_403(server):
    """The browser would send the page's cookie along; Origin (or Referer) says who asked."""
    status, piece = call("POST", server.url + "/api/pieces", {"name": "victim"})
    assert status == 201
    before = names(server)
    pid = piece["id"]
    for source in ({"Origin": EVIL}, {"Origin": "null"}, {"Referer": EVIL + "/page.html"},
                   {"Origin": server.url.replace("127.0.0.1", "localhost")}, {}):
        headers = {**cookie(server), **source}
        status, body = call("POST", server.url + "/api/pieces", {"name": "forged"}, token=False, headers=headers)
        assert status == 403 and "own page" in one_line(body), (source, status)
        assert call("DELETE", f"{server.url}/api/pieces/{pid}", token=False, headers=headers)[0] == 403
        assert call("POST", f"{server.url}/api/pieces/{pid}/undo", token=False, headers=headers)[0] == 403
        status, _ = call("POST", f"{server.url}/api/pieces/upload?name=x.mid", raw=make_song_bytes(1),
                         token=False, headers=headers)
        assert status == 403, source
    assert names(server) == before
    status, _ = call("POST", server.url + "/api/pieces", {"name": "referred"}, token=False,
                     headers={**cookie(server), "Referer": server.url + "/#piece=x"})
    assert status == 201  # a same-origin Referer stands in for a missing Origin


def test_a_body_that_is_not_json_gets_415(server):
    before = names(server)
    # the request: a "simple" cross-site POST, which a browser sends without asking
    status, body = call("POST", server.url + "/api/pieces", raw=b'{"name": "plain"}', token=False,
                        headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert status == 401, (status, body)
    # even with the token (or from the page itself) a JSON endpoint takes JSON only
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": kind} if kind else {"Content-Type": ""}
        status, body = call("POST", server.url + "/api/pieces", raw=b'{"name": "plain"}', headers=headers)
        assert status == 415 and "JSON" in one_line(body), (kind, status, body)
        status, body = call("POST", server.url + "/api/pieces", raw=b'{"name": "plain"}', token=False,
                            headers={**cookie(server), "Origin": server.url, **headers})
        assert status == 415, (kind, status)
    status, body = call("POST", f"{server.url}/api/pieces/upload?name=x.mid", raw=make_song_bytes(1),
                        headers={"Content-Type": "text/plain"})
    assert status == 415 and "audio/midi" in one_line(body)
    assert names(server) == before
    status, piece = call("POST", f"{server.url}/api/pieces/upload?name=ok.mid", raw=make_song_bytes(1))
    assert status == 201  # audio/midi is what an upload is
    status, _ = call("POST", f"{server.url}/api/pieces/upload?name=ok2.mid", raw=make_song_bytes(1),
                     headers={"Content-Type": "application/octet-stream"})
    assert status == 201


def test_no_token_is_refused_off_loopback_with_exit_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, words in ((["--host", "0.0.0.0", "--no-token"], "only on loopback"),
                        (["--host", "192.168.1.7", "--no-token"], "only on loopback"),
                        (["--no-token", "--token", "abc"], "contradict"),
                        (["--token", ""], "non-empty"),
                        (["--token", "a&b"], "letters, digits"),
                        (["--allow-host", "http://x.example"], "--allow-host")):
        res = subprocess.run([sys.executable, "-m", "midigen", "studio", "--ckpt", str(tmp_path / "none"), *args],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        err = res.stderr.strip()
        assert res.returncode == 2 and words in err and "\n" not in err, (args, res.returncode, err)


def test_no_token_on_loopback_still_checks_host_and_origin_and_allow_host_adds_a_name(ckpt, tmp_path):
    s = Server(ckpt, tmp_path / "ws", "--no-token", "--allow-host", "studio.test", "--allow-host", "Other.Test")
    try:
        assert s.token is None and s.page_url.rstrip("/") == s.url
        assert call("GET", s.url + "/api/pieces")[0] == 200
        for host in ("studio.test", "studio.test:443", "other.test:8080"):
            assert call("GET", s.url + "/api/pieces", headers={"Host": host})[0] == 200, host
        assert call("GET", s.url + "/api/pieces", headers={"Host": "evil.example.com"})[0] == 403
        assert call("POST", s.url + "/api/pieces", {"name": "x"}, headers={"Origin": EVIL})[0] == 403
        assert call("POST", s.url + "/api/pieces", {"name": "x"}, headers={"Authorization": "Bearer x"})[0] == 403
        status, body = call("POST", s.url + "/api/pieces", {"name": "x"},
                            headers={"Host": "studio.test", "Origin": "https://studio.test"})
        assert status == 201, body
    finally:
        s.stop()


def test_a_given_token_is_the_one_required(ckpt, tmp_path):
    s = Server(ckpt, tmp_path / "ws", "--token", "my-own-token")
    try:
        assert s.token == "my-own-token"
        assert call("GET", s.url + "/api/info")[0] == 200
        assert call("GET", s.url + "/api/info", headers={"Authorization": "Bearer my-own-tokeN"})[0] == 403
    finally:
        s.stop()
