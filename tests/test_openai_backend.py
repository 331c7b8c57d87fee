"""The OpenAI-compatible backend against a small local HTTP server (stdlib): request bodies,
seeds, sharding, and the error paths (bad key, connection refused, retries, timeouts).
The same backend runs against a real vLLM server in tests/test_vllm.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from srlm import SrlmError
from srlm.backends import make_generator
from srlm.generation import GenerationOptions, request_seed


class FakeServer:
    """Answers chat completions; ``script`` holds (status, headers, delay) to play before the 200s."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict, float]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                            "body": body})
                    status, headers, delay = server.script.pop(0) if server.script else (200, {}, 0.0)
                time.sleep(delay)
                payload = server.answer(body) if status == 200 else {"error": {"message": f"scripted {status}"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @staticmethod
    def answer(body: dict) -> dict:
        """Deterministic replies that show what was asked: the prompt text, the seed, the choice index."""
        prompt = body["messages"][-1]["content"]
        choices = [{"index": j, "message": {"role": "assistant", "content": f"  {prompt}|{body['seed']}|{j}\n"}}
                   for j in reversed(range(body["n"]))]  # out of order on purpose
        return {"choices": choices, "usage": {"completion_tokens": 5 * body["n"]}}


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


FAST = {"retry-after-ms": "10"}  # the server asks for a 10 ms wait: the client's backoff honours it


def options(server, **kw) -> GenerationOptions:
    return GenerationOptions(**{"backend": "openai", "base_url": server.url, "api_key_env": "SRLM_TEST_KEY", **kw})


PROMPTS = ["first", "second", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "third"}], "fourth"]


def test_requests_replies_and_stats(server, monkeypatch):
    monkeypatch.setenv("SRLM_TEST_KEY", "sk-local")
    gen = make_generator("served-name", options(server))
    out = gen.generate(PROMPTS, n=3, temperature=0.7, top_p=0.8, max_new_tokens=20, seed=7)
    assert out[0] == [f"first|{request_seed(7, 0)}|{j}" for j in range(3)]  # stripped, in choice order
    assert out[2][0].startswith("third|")
    bodies = sorted((r["body"] for r in server.requests), key=lambda b: str(b["messages"]))
    assert {b["model"] for b in bodies} == {"served-name"}
    assert all(b["n"] == 3 and b["temperature"] == 0.7 and b["top_p"] == 0.8 and b["max_tokens"] == 20 for b in bodies)
    assert {b["seed"] for b in bodies} == {request_seed(7, i) for i in range(4)}
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert {r["headers"]["authorization"] for r in server.requests} == {"Bearer sk-local"}
    assert (gen.stats.prompts, gen.stats.completions, gen.stats.new_tokens) == (4, 12, 60)


def test_greedy_asks_once_and_repeats(server):
    gen = make_generator("m", options(server, served_model="other"))
    out = gen.generate(["hi"], n=4, temperature=0.0)
    assert out == [[f"hi|{request_seed(0, 0)}|0"] * 4]
    body = server.requests[0]["body"]
    assert body["n"] == 1 and body["temperature"] == 0.0 and body["model"] == "other"
    assert "authorization" not in server.requests[0]["headers"]  # key variable unset: no key sent


def test_shards_send_only_their_prompts(server):
    gen = make_generator("m", options(server))
    full = gen.generate(PROMPTS, n=2, seed=3)
    parts = [gen.generate(PROMPTS, n=2, seed=3, shard=(k, 3)) for k in range(3)]
    assert [[i for i, r in enumerate(p) if r is not None] for p in parts] == [[0, 3], [1], [2]]
    assert [next(p[i] for p in parts if p[i] is not None) for i in range(4)] == full
    assert len(server.requests) == 8


def test_bad_key_names_the_variable_and_does_not_retry(server, monkeypatch):
    monkeypatch.setenv("SRLM_TEST_KEY", "wrong")
    server.script = [(401, {}, 0.0)]
    gen = make_generator("m", options(server))
    with pytest.raises(SrlmError, match=r"HTTP 401.*'SRLM_TEST_KEY', which is set") as e:
        gen.generate(["hi"], n=2)
    assert server.url in str(e.value)
    assert len(server.requests) == 1


def test_forbidden_with_unset_key(server):
    server.script = [(403, {}, 0.0)]
    with pytest.raises(SrlmError, match=r"HTTP 403.*'SRLM_TEST_KEY', which is not set"):
        make_generator("m", options(server)).generate(["hi"])


def test_retries_429_and_5xx_then_succeeds(server):
    server.script = [(429, {"Retry-After": "0.01"}, 0.0), (503, FAST, 0.0), (500, FAST, 0.0)]
    gen = make_generator("m", options(server, max_retries=3))
    started = time.perf_counter()
    assert gen.generate(["hi"], n=1, seed=1) == [[f"hi|{request_seed(1, 0)}|0"]]
    assert gen.retries == 3 and len(server.requests) == 4
    assert time.perf_counter() - started < 0.5  # Retry-After honoured (the default backoff alone is 0.5 s + 1 s + 2 s)


def test_gives_up_after_max_retries(server):
    server.script = [(502, FAST, 0.0)] * 5
    gen = make_generator("m", options(server, max_retries=2))
    with pytest.raises(SrlmError, match=r"HTTP 502: scripted 502 \(gave up after 3 tries\)"):
        gen.generate(["hi"])
    assert len(server.requests) == 3


def test_timeout_is_retried(server):
    server.script = [(200, {}, 1.0)]
    gen = make_generator("m", options(server, request_timeout=0.2, max_retries=1))
    assert gen.generate(["hi"]) == [[f"hi|{request_seed(0, 0)}|0"]]
    assert gen.retries == 1


def test_other_client_errors_fail_at_once(server):
    server.script = [(404, {}, 0.0)]
    with pytest.raises(SrlmError, match="HTTP 404.*served model name 'm'"):
        make_generator("m", options(server)).generate(["hi"])
    assert len(server.requests) == 1


def test_connection_refused_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    gen = make_generator("m", GenerationOptions(backend="openai", base_url=f"http://127.0.0.1:{port}/v1/", max_retries=1))
    started = time.perf_counter()
    with pytest.raises(SrlmError, match=rf"http://127.0.0.1:{port}/v1/chat/completions: cannot connect .*gave up after 2 tries"):
        gen.generate(["hi"])
    assert time.perf_counter() - started < 5


def test_settings_are_checked(server):
    with pytest.raises(SrlmError, match="concurrency must be >= 1"):
        make_generator("m", options(server, concurrency=0))
    with pytest.raises(SrlmError, match="base_url is empty"):
        make_generator("m", options(server, base_url=""))
