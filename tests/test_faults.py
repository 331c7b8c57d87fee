"""Self-judging through the OpenAI-compatible backend against a judge server that misbehaves: 30% of the
requests fail first (500 and 503, 429 with Retry-After, or no answer before the client's timeout) and some answer
late. The judgements must equal a clean run's byte for byte, within a stated retry budget: every failed attempt
is retried, and no request needs more than 3 attempts (max_retries 3 leaves one spare)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from srlm import judge
from srlm.io import write_jsonl

TIMEOUT = 1.0  # the client's request_timeout; a "timeout" fault sleeps past it


def unit(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


def plan(key: str) -> list[str]:
    """What the server does on each attempt at one request, then answers: 30% fail at least once."""
    u = unit(key)
    if u < 0.10:
        return ["500", "503"]
    if u < 0.20:
        return ["429"]
    if u < 0.30:
        return ["timeout"]
    if u < 0.40:
        return ["late"]  # answers within the timeout, slowly: not a failure
    return []


class JudgeServer:
    """A rubric judge on an OpenAI-compatible endpoint: its scores depend only on the request (prompt, seed, k)."""

    def __init__(self, faults: bool):
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = body["messages"][-1]["content"] + f"|{body.get('seed')}"
                with server.lock:
                    attempt = server.attempts.get(key, 0)
                    server.attempts[key] = attempt + 1
                steps = plan(key) if faults else []
                step = steps[attempt] if attempt < len(steps) else "answer"
                try:
                    if step in ("500", "503"):
                        return self.reply(int(step), {"error": {"message": "overloaded"}})
                    if step == "429":
                        return self.reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                    if step == "timeout":
                        time.sleep(TIMEOUT + 0.5)
                        return self.reply(200, {"error": "too late"})
                    if step == "late":
                        time.sleep(TIMEOUT / 3)
                    scores = [int(unit(f"{key}|{k}") * 6) for k in range(body.get("n", 1))]
                    self.reply(200, {"choices": [{"index": k, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": f"Judged.\nScore: {s}"}} for k, s in enumerate(scores)],
                        "usage": {"completion_tokens": 3}})
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on a late answer
                    pass

            def reply(self, status, data, headers=None):
                raw = json.dumps(data).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", "Content-Length": str(len(raw)),
                                    **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "candidates.jsonl"
    write_jsonl(path, [{"id": f"p{i}", "prompt": f"Question {i}: name a colour.",
                        "replies": [f"Blue ({i}).", f"I am not sure ({i})."]} for i in range(40)], "candidates")
    return path


def judge_through(server: JudgeServer, candidates, out):
    config = judge.JudgeConfig.load("tiny", backend="openai", base_url=server.url, served_model="judge",
                                    request_timeout=TIMEOUT, max_retries=3, concurrency=8, samples=3)
    started = time.perf_counter()
    stats = judge.run(config, "judge", candidates, out)
    return stats, time.perf_counter() - started


def test_a_judge_server_failing_30_percent_of_requests_gives_the_clean_runs_judgements(candidates, tmp_path):
    with JudgeServer(faults=False) as clean:
        judge_through(clean, candidates, tmp_path / "clean.jsonl")
    with JudgeServer(faults=True) as faulty:
        stats, seconds = judge_through(faulty, candidates, tmp_path / "faulty.jsonl")
    assert (tmp_path / "faulty.jsonl").read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
    requests = len(faulty.attempts)
    failing = [k for k in faulty.attempts if plan(k) and plan(k) != ["late"]]
    injected = sum(len(plan(k)) for k in failing)
    # the plan fails a request's first attempt for 30% of hash values; these 80 fixed requests draw 31 of them (the
    # hash is of the request's text: the same on any machine)
    assert requests == 80 and 0.2 <= len(failing) / requests <= 0.5
    # every failed attempt was retried once, and no request more: the budget is the failures themselves
    assert sum(faulty.attempts.values()) == requests + injected
    assert max(faulty.attempts.values()) <= 3 and stats["unscored_replies"] < stats["replies"]
    print(f"\n{requests} judge requests, {len(failing)} failing at first ({injected} failed attempts: 500/503, "
          f"429, timeouts), all retried; identical to the clean run; {seconds:.1f} s")
