#!/usr/bin/env python3
"""scripts/bench/shared_state.py: issue 20's cross-instance figures, (1) and (3) of
scripts/bench/shared_state.sh (which runs this file; (2), the wrk A/B, is in the shell script).

Standalone:  python3 scripts/bench/shared_state.py [--bin target/release/keyrelay] [--redis-port P]
             (build first: cargo build --release; about 30-60 s; everything on 127.0.0.1; without
             --redis-port it starts its own redis-server --save '' --appendonly no on a free port)

Each scenario gets its own SHARED_STATE_PREFIX, fresh keyrelay processes (PORT picked free,
LOG_LEVEL=warn, their own empty working directory) and a fresh stand-in upstream: a Python
http.server in a process of its own (so its GIL never delays the client's clock), which answers
POST /v1/chat/completions with 200 JSON naming the pool key it received by position
("system_fingerprint": "fp_key<n>", n from 1; keyrelay masks a key quoted in an error body, so the
key itself is never echoed), or 429 with Retry-After: 60 as its rule says, and records every
request (monotonic time, key, status). Times are CLOCK_MONOTONIC, which all processes share.

(1) Bench-to-honour latency: instances A and B on one Redis, 2 keys each (the same 2), sequential
    requests, so B's round robin alternates key 1, key 2 and every second request of B tests key 1.
    Per round, interleaved, three ways of benching key 1 on A and seeing B honour it:
      requests  POST /status/keys/openai/1/disable on A at t0; B sends requests back to back; B
                honoured it when a request goes to key 2 where the alternation expected key 1
                (the figure is that request's completion, so it includes up to ~2 B round trips;
                when the last B request that still used key 1 was sent is kept as the lower
                bound). Then .../enable on A, and the time until B's requests use key 1 again.
      status    the same disable on A; B's GET /status polled every 1 ms until key 1 is "disabled";
                then enable, polled until "ready".
      429       the stand-in is armed to answer 429 Retry-After: 60 to the next request that carries
                key 1; requests go to A until one of them met it (A benches key 1 and retries on key
                2: t0 = when the stand-in wrote the 429); B's requests as in "requests". Then
                POST .../reset on A and the time until B's requests use key 1 again.
    --rounds rounds (default 200); p50 / p99 / max per way and direction. Target: p99 <= 100 ms.
    Each figure is also split where A's event reached Redis: a subscriber on <prefix>:events, in a
    process of its own, records when each of A's event lines arrives ("until PUBLISH": A's writer
    sleeping out its 5 ms cycle, then the SET and the PUBLISH); the rest is delivery to B's events
    thread, applying it, and the client seeing it.
    Each round starts clean: key 1 "ready" on A and B (checked), B alternating again, then a random
    pause of 0-10 ms, so that the bench falls anywhere in A's writer's 5 ms cycle (the same pause
    before each enable and reset).

(3) The cost of a 429 across instances: 3 instances on one Redis, 4 keys, a stand-in with a rule
    per key:
      first     (the issue's) the first request carrying a key gets 429 Retry-After: 60, every
                later one 200; so a key sent again after its 429 is a request an instance sent on
                a key another had benched, answered 200 here
      sticky    as a provider does: 429 Retry-After: 60 to every request on a key for 60 s from
                its first 429; every such 429 is a 429 the key cost
    Traffic: "sequential" (one client, --cost-requests requests, request i to instance i mod 3,
    back to back), the same with a pause of 3 ms and of 10 ms after each answer (--gaps-ms; they
    show how far apart requests must be for the bench to arrive first), and "3 concurrent
    clients" (each --cost-requests / 3 requests, client j starting at instance j, each going
    round the instances). The same without SHARED_STATE_URL (each instance learns alone) as the
    control. Each scenario --cost-repeats times (default 5), fresh each time: whether a bench
    arrives in time depends on where it falls in the writer's 5 ms cycle. Per key, the mean per
    repetition of the upstream's 429s and of the requests it got on the key after that key's
    first 429, and the worst key in any repetition. Target: 1 per key, not 3.

Prints the figures; --json FILE writes them too. Exit 0 whether or not the targets are met, 1
when the run itself failed (a keyrelay not starting, Redis not answering, a timeout).
"""

import argparse
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHAT = "/openai/v1/chat/completions"
MODEL = "gpt-4o-mini"
BODY = json.dumps({
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a concise assistant. Answer in one short paragraph, plain text, no lists."},
        {"role": "user", "content": "Summarise the trade-offs between thread-per-connection servers and event loops."},
    ],
    "temperature": 0.2, "max_tokens": 256, "stream": False, "user": "bench-client-0042",
}).encode()
RETRY_AFTER = 60


def connection(port, timeout=10):
    """A keep-alive client connection with TCP_NODELAY."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def now_ns():
    return time.monotonic_ns()


def ms(ns):
    return ns / 1e6


# ---------------------------------------------------------------------------------------------
# The stand-in upstream (run as `shared_state.py upstream`, a process of its own)


def serve_upstream(keys):
    lock = threading.Lock()
    state = {"rule": "echo", "armed": set(), "first429": {}, "log": [], "last_armed_429": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # the head and the body are two writes: no 40 ms delayed-ACK stall

        def log_message(self, *args):
            pass

        def reply(self, status, body, extra=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/_control":
                order = json.loads(raw or b"{}")
                with lock:
                    if "rule" in order:
                        state.update(rule=order["rule"], armed=set(), first429={}, log=[], last_armed_429=0)
                    for index in order.get("arm", []):
                        state["armed"].add(index)
                    log = list(state["log"]) if order.get("log") else []
                return self.reply(200, {"log": log})
            if self.path != "/v1/chat/completions":
                return self.reply(404, {"error": {"message": "no such path", "type": "invalid_request_error"}})
            auth = self.headers.get("Authorization", "")
            key = auth[len("Bearer "):] if auth.startswith("Bearer ") else auth
            index = keys.index(key) + 1 if key in keys else 0
            t = now_ns()
            with lock:
                rule = state["rule"]
                limited = False
                if index in state["armed"]:
                    state["armed"].discard(index)
                    state["last_armed_429"] = t
                    limited = True
                elif rule == "first":
                    limited = index not in state["first429"]
                elif rule == "sticky":
                    first = state["first429"].get(index)
                    limited = first is None or t - first < RETRY_AFTER * 1e9
                if limited:
                    state["first429"].setdefault(index, t)
                state["log"].append((t, index, 429 if limited else 200))
                last_armed = state["last_armed_429"]
            if limited:
                return self.reply(429, {"error": {"message": "Rate limit reached; try again in 60s.",
                                                  "type": "requests", "code": "rate_limit_exceeded"}},
                                  [("Retry-After", str(RETRY_AFTER))])
            self.reply(200, {
                "id": "chatcmpl-shared0001", "object": "chat.completion", "created": 1700000000,
                "model": MODEL + "-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Threads are simple."},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44},
                "system_fingerprint": f"fp_key{index}",
                "armed_429_ns": last_armed,
            })

    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


def subscribe(port, channel, out_path):
    """Appends "<monotonic ns> <line>" to out_path for every line of every message published on
    `channel` except conversation ("session") lines; run as `shared_state.py subscriber`."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.create_connection(("127.0.0.1", port), timeout=None) as s, open(out_path, "w", buffering=1) as out:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel.encode()))
        f = s.makefile("rb")

        def item():
            line = f.readline()
            if not line:
                sys.exit(0)
            if line[:1] == b"$":
                return f.read(int(line[1:]) + 2)[:-2]
            if line[:1] == b":":
                return int(line[1:])
            return line

        while True:
            head = f.readline()
            if not head:
                return
            if head[:1] != b"*":
                continue
            parts = [item() for _ in range(int(head[1:]))]
            t = now_ns()
            if parts and parts[0] == b"message":
                for line in parts[2].decode(errors="replace").splitlines():
                    if " session " not in line:
                        out.write(f"{t} {line}\n")
            elif parts and parts[0] == b"subscribe":
                out.write(f"{t} subscribed\n")


class Subscriber:
    def __init__(self, port, channel, workdir):
        self.path = os.path.join(workdir, f"events-{now_ns()}.txt")
        open(self.path, "w").close()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "subscriber", "--port", str(port),
                                      "--channel", channel, "--out", self.path], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.getsize(self.path):  # "subscribed"
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the events subscriber did not subscribe")
            time.sleep(0.02)

    def lines(self):
        """[(ns, words of the event line)]"""
        with open(self.path) as f:
            return [(int(t), rest.split()) for t, _, rest in (line.rstrip("\n").partition(" ") for line in f)
                    if rest != "subscribed"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Upstream:
    def __init__(self, keys):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "upstream", "--keys", ",".join(keys)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError("the stand-in upstream did not start")
        self.port = int(line)
        self.conn = connection(self.port)

    def control(self, **order):
        self.conn.request("POST", "/_control", body=json.dumps(order), headers={"Content-Type": "application/json"})
        return json.loads(self.conn.getresponse().read())["log"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Redis


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cmd(port, *args, timeout=2):
    """One command over a fresh connection; the reply decoded (simple types only)."""
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in (str(x).encode() for x in args))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(out)
        f = s.makefile("rb")
        line = f.readline()
        kind, rest = line[:1], line[1:].strip()
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode()
        raise RuntimeError(f"redis: unexpected reply {line!r}")


class Redis:
    def __init__(self, port, workdir):
        self.proc = None
        if port:
            self.port = port
        else:
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", workdir, "--logfile", os.path.join(workdir, "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis_cmd(self.port, "PING") == "PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                self.stop()
                raise RuntimeError(f"redis on port {self.port} does not answer")
            time.sleep(0.02)

    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# keyrelay


class Keyrelay:
    def __init__(self, name, binary, keys, upstream_port, workdir, shared_url=None, prefix=None):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.stderr = os.path.join(self.dir, "stderr.log")
        for attempt in range(5):  # a free port may be taken between the check and the bind
            self.port = free_port()
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": str(self.port), "HOST": "127.0.0.1",
                   "OPENAI_API_KEYS": ",".join(keys), "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}",
                   "LOG_LEVEL": "warn"}
            if shared_url:
                env.update(SHARED_STATE_URL=shared_url, SHARED_STATE_PREFIX=prefix)
            with open(self.stderr, "ab") as log:
                self.proc = subprocess.Popen([binary], env=env, cwd=self.dir, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=log)
            if self.wait_ready(shared_url is not None):
                self.conn = connection(self.port)
                self.last_key = None
                return
            self.stop()
        raise RuntimeError(f"keyrelay {name} did not start: {self.tail()}")

    def tail(self):
        with open(self.stderr, "rb") as f:
            return f.read()[-600:].decode(errors="replace")

    def wait_ready(self, shared):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/status")
                status = json.loads(conn.getresponse().read())
                conn.close()
                if not shared or (status.get("shared_state") or {}).get("state") == "up":
                    return True
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.02)
        return False

    def chat(self):
        """One chat request; (status, key position that served it or 0, body)."""
        self.conn.request("POST", CHAT, body=BODY, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        raw = response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        fp = body.get("system_fingerprint") or ""
        key = int(fp[6:]) if response.status == 200 and fp.startswith("fp_key") else 0
        if key:
            self.last_key = key
        return response.status, key, body

    def status(self):
        self.conn.request("GET", "/status")
        return json.loads(self.conn.getresponse().read())

    def key_state(self, position):
        for provider in self.status()["providers"]:
            if provider["name"] == "openai":
                return provider["keys"][position - 1]["state"]
        return None

    def steer(self, position, action):
        self.conn.request("POST", f"/status/keys/openai/{position}/{action}", body=b"")
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{action} on {self.name} answered {response.status}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# (1) bench-to-honour latency


class Timeout(Exception):
    pass


def b_avoids(b, bad, t0, deadline_s):
    """B's requests back to back until one goes to the other key where the alternation expected
    `bad`. Returns (ns to that request's completion: B had honoured the bench by then; ns to when
    the last request that still went to `bad` was sent, 0 when none did after t0: B had not
    honoured it yet then; requests sent)."""
    prev = b.last_key
    last_bad = 0
    end = t0 + deadline_s * 1e9
    n = 0
    while now_ns() < end:
        sent = now_ns()
        status, key, _ = b.chat()
        t = now_ns()
        n += 1
        if status != 200 or not key:
            raise RuntimeError(f"B answered {status} while key {bad} was being benched")
        if key == bad:
            last_bad = max(0, sent - t0)
        elif key == prev:
            return t - t0, last_bad, n
        prev = key
    raise Timeout()


def b_uses(b, bad, t0, deadline_s):
    """B's requests until one goes to `bad` again; (ns to its completion, requests sent)."""
    end = t0 + deadline_s * 1e9
    n = 0
    while now_ns() < end:
        status, key, _ = b.chat()
        n += 1
        if status != 200:
            raise RuntimeError(f"B answered {status} while key {bad} was coming back")
        if key == bad:
            return now_ns() - t0, n
    raise Timeout()


def b_polls(b, position, want, t0, deadline_s, every_ns=1_000_000):
    """B's /status every 1 ms until key `position` is in state `want`; (ns, polls, ns spent in
    the polls)."""
    end = t0 + deadline_s * 1e9
    n = 0
    spent = 0
    next_poll = now_ns()
    while now_ns() < end:
        t = now_ns()
        state = b.key_state(position)
        spent += now_ns() - t
        n += 1
        if state == want:
            return now_ns() - t0, n, spent
        next_poll += every_ns
        pause = next_poll - now_ns()
        if pause > 0:
            time.sleep(pause / 1e9)
        else:
            next_poll = now_ns()
    raise Timeout()


def clean(a, b, position, rng, deadline_s=2):
    """Key `position` ready on both, and B alternating with its last request on the other key;
    then a pause of 0-10 ms (uniform), so that the bench that follows falls anywhere in A's
    writer's 5 ms cycle: right after the previous measurement it would fall at the same point of
    it every round (B saw the last change just after A's writer sent it)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if a.key_state(position) == "ready" and b.key_state(position) == "ready":
            break
        time.sleep(0.005)
    else:
        raise RuntimeError(f"key {position} did not come back to ready on A and B")
    for _ in range(4):
        if b.last_key not in (None, position):
            time.sleep(rng.uniform(0, 0.010))
            return
        b.chat()
    raise RuntimeError("B does not alternate between its keys")


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def summary(values_ns):
    v = [ms(x) for x in values_ns]
    return {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v) if v else float("nan"),
            "min": min(v) if v else float("nan"), "mean": sum(v) / len(v) if v else float("nan")}


def honour(args, binary, redis, workdir):
    keys = ["sk-shared-bench-0001", "sk-shared-bench-0002"]
    up = Upstream(keys)
    prefix = f"krbench-honour-{os.getpid()}-{now_ns()}"
    a = b = None
    series = {name: [] for name in ("requests_disable", "requests_lower", "requests_enable", "status_disable",
                                    "status_enable", "429_bench", "429_lower", "429_reset")}
    counts = {"b_requests": 0, "b_polls": 0, "b_poll_ns": 0, "timeouts": 0, "b_rtt_ns": 0}
    marks = []  # (series, t0, event op, its last field or None): when A's change was published
    rng = random.Random(20)
    events = None
    try:
        up.control(rule="echo")
        events = Subscriber(redis.port, f"{prefix}:events", workdir)
        a = Keyrelay("honour-A", binary, keys, up.port, workdir, redis.url(), prefix)
        b = Keyrelay("honour-B", binary, keys, up.port, workdir, redis.url(), prefix)
        for _ in range(4):
            b.chat()
        seen = [b.chat()[1] for _ in range(4)]
        if sorted(set(seen)) != [1, 2] or any(x == y for x, y in zip(seen, seen[1:])):
            raise RuntimeError(f"B's requests do not alternate over its 2 keys: {seen}")
        t_rtt = now_ns()
        for _ in range(50):
            b.chat()
        counts["b_rtt_ns"] = (now_ns() - t_rtt) / 50
        started = time.monotonic()
        for r in range(args.rounds):
            if time.monotonic() - started > args.honour_deadline:
                raise RuntimeError(f"(1) took longer than {args.honour_deadline} s; stopped after {r} rounds")
            try:
                # requests: disable on A, B's requests avoid key 1; enable, B's requests use it again.
                clean(a, b, 1, rng)
                t0 = now_ns()
                a.steer(1, "disable")
                took, lower, n = b_avoids(b, 1, t0, args.round_deadline)
                series["requests_disable"].append(took)
                marks.append(("requests_disable", t0, "disabled", "1"))
                series["requests_lower"].append(lower)
                counts["b_requests"] += n
                time.sleep(rng.uniform(0, 0.010))
                t0 = now_ns()
                a.steer(1, "enable")
                took, n = b_uses(b, 1, t0, args.round_deadline)
                series["requests_enable"].append(took)
                marks.append(("requests_enable", t0, "disabled", "0"))
                counts["b_requests"] += n
                # status: the same, seen on B's /status polled every 1 ms.
                clean(a, b, 1, rng)
                t0 = now_ns()
                a.steer(1, "disable")
                took, n, spent = b_polls(b, 1, "disabled", t0, args.round_deadline)
                series["status_disable"].append(took)
                counts["b_polls"] += n
                counts["b_poll_ns"] += spent
                marks.append(("status_disable", t0, "disabled", "1"))
                time.sleep(rng.uniform(0, 0.010))
                t0 = now_ns()
                a.steer(1, "enable")
                took, n, spent = b_polls(b, 1, "ready", t0, args.round_deadline)
                series["status_enable"].append(took)
                counts["b_polls"] += n
                counts["b_poll_ns"] += spent
                marks.append(("status_enable", t0, "disabled", "0"))
                # 429: the stand-in answers 429 Retry-After: 60 once on key 1, through A.
                clean(a, b, 1, rng)
                before = a.chat()[2].get("armed_429_ns", 0)
                up.control(arm=[1])
                t0 = None
                for _ in range(4):
                    status, key, body = a.chat()
                    if status != 200:
                        raise RuntimeError(f"A answered {status} after the 429")
                    if body.get("armed_429_ns", 0) != before:
                        t0 = body["armed_429_ns"]
                        break
                if t0 is None:
                    raise RuntimeError("A sent no request on key 1 in 4 tries")
                took, lower, n = b_avoids(b, 1, t0, args.round_deadline)
                series["429_bench"].append(took)
                marks.append(("429_bench", t0, "bench", None))
                series["429_lower"].append(lower)
                counts["b_requests"] += n
                time.sleep(rng.uniform(0, 0.010))
                t0 = now_ns()
                a.steer(1, "reset")
                took, n = b_uses(b, 1, t0, args.round_deadline)
                series["429_reset"].append(took)
                marks.append(("429_reset", t0, "reset", None))
                counts["b_requests"] += n
            except Timeout:
                counts["timeouts"] += 1
                a.steer(1, "enable")
                a.steer(1, "reset")
        # When each change of A's reached Redis: the first event line with its op after t0.
        time.sleep(0.05)
        lines = events.lines()
        published = {}
        for name, t0, op, last in marks:
            t = next((t for t, words in lines if t > t0 and len(words) >= 3 and words[2] == op
                      and (last is None or words[-1] == last)), None)
            if t is not None:
                published.setdefault(name, []).append(t - t0)
        return {"series": {k: summary(v) for k, v in series.items()},
                "published": {k: summary(v) for k, v in published.items()},
                "raw_ms": {k: [round(ms(x), 3) for x in v] for k, v in series.items()},
                "rounds": args.rounds, "b_requests": counts["b_requests"], "b_polls": counts["b_polls"],
                "b_poll_ms": ms(counts["b_poll_ns"] / max(1, counts["b_polls"])),
                "timeouts": counts["timeouts"], "b_rtt_ms": ms(counts["b_rtt_ns"])}
    finally:
        for k in (a, b):
            if k:
                k.stop()
        if events:
            events.stop()
        up.stop()


# ---------------------------------------------------------------------------------------------
# (3) the cost of a 429 across instances


def cost(args, binary, redis, workdir, rule, traffic, gap_ms, shared):
    keys = [f"sk-shared-bench-{i:04d}" for i in range(1, 5)]
    up = Upstream(keys)
    prefix = f"krbench-cost-{os.getpid()}-{now_ns()}"
    tag = f"cost-{rule}-{traffic}{gap_ms or ''}-{'shared' if shared else 'alone'}"
    instances = []
    statuses = {}
    lock = threading.Lock()
    try:
        up.control(rule=rule)
        for i in range(3):
            instances.append(Keyrelay(f"{tag}-{i + 1}", binary, keys, up.port, workdir,
                                      redis.url() if shared else None, prefix))
        n = args.cost_requests

        def client(j, count, gap_s):
            conns = [connection(k.port) for k in instances]
            try:
                for i in range(count):
                    conn = conns[(j + i) % 3]
                    conn.request("POST", CHAT, body=BODY, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    with lock:
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                    if gap_s:
                        time.sleep(gap_s)
            finally:
                for c in conns:
                    c.close()

        t_start = now_ns()
        if traffic == "sequential":
            client(0, n, gap_ms / 1000)
        else:
            threads = [threading.Thread(target=client, args=(j, n // 3, 0)) for j in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            if any(t.is_alive() for t in threads):
                raise RuntimeError("a client of (3) did not finish in 60 s")
        wall = now_ns() - t_start
        log = up.control(log=True)
        per_key = {}
        for index in range(1, 5):
            entries = [(t, s) for t, i, s in log if i == index]
            first = next((t for t, s in entries if s == 429), None)
            per_key[index] = {
                "429": sum(1 for _, s in entries if s == 429),
                "after_429": sum(1 for t, _ in entries if first is not None and t > first
                                 and t - first < RETRY_AFTER * 1e9),
                "requests": len(entries),
            }
        return {"rule": rule, "traffic": traffic, "gap_ms": gap_ms, "shared": shared, "per_key": per_key, "statuses": statuses,
                "upstream_requests": len(log), "client_requests": sum(statuses.values()), "wall_ms": ms(wall)}
    finally:
        for k in instances:
            k.stop()
        up.stop()


# ---------------------------------------------------------------------------------------------
# Output


def print_honour(h, commit, binary):
    s = h["series"]
    print(f"(1) bench-to-honour latency across instances: keyrelay {commit} ({binary}), A and B on one Redis, "
          f"2 keys, {h['rounds']} rounds, each way interleaved per round; ms from the bench on A")
    fmt = "  {:<58} {:>5} {:>8} {:>8} {:>8}   {:<20} {}"
    print(fmt.format("way", "n", "p50", "p99", "max", "target", "of which until PUBLISH p50/p99/max"))

    def row(label, key, target=True):
        x = s[key]
        goal = ""
        if target:
            goal = ("ok" if x["p99"] <= 100 else "MISSED") + " p99 <= 100 ms"
        pub = h["published"].get(key)
        pub = f"{pub['p50']:.2f} / {pub['p99']:.2f} / {pub['max']:.2f} (n {pub['n']})" if pub else ""
        print(fmt.format(label, x["n"], f"{x['p50']:.2f}", f"{x['p99']:.2f}", f"{x['max']:.2f}", goal, pub))

    row("disable on A -> B's requests avoid key 1", "requests_disable")
    row("  lower bound: B's last request still on key 1 sent", "requests_lower", False)
    row("enable on A -> B's requests use key 1 again", "requests_enable", False)
    row("disable on A -> B's /status (polled every 1 ms) says so", "status_disable")
    row("enable on A -> B's /status says ready", "status_enable", False)
    row("429 Retry-After 60 on A -> B's requests avoid key 1", "429_bench")
    row("  lower bound: B's last request still on key 1 sent", "429_lower", False)
    row("reset on A -> B's requests use key 1 again", "429_reset", False)
    print(f"  B: {h['b_requests']} requests ({h['b_rtt_ms']:.2f} ms per request, sequential), {h['b_polls']} "
          f"/status polls ({h['b_poll_ms']:.2f} ms each); rounds that timed out ({'' if h['timeouts'] else 'none; '}>{ARGS.round_deadline:g} s): "
          f"{h['timeouts']}")
    print("  t0: just before the steering POST is sent to A; for the 429, when the stand-in wrote it. The request"
          " figure is the completion of B's first request that went to key 2 where key 1 was due (so it includes"
          " up to 2 B requests after B honoured it); the lower bound is when B's last request that still went to"
          " key 1 was sent (0 when none did after t0)."
          " Until PUBLISH: t0 to when a client subscribed to <prefix>:events (another process) received A's event"
          " (A's writer thread: it sleeps 5 ms between batches, then SETs the fact and PUBLISHes); the rest is"
          " delivery to B's events thread, applying it, and the client seeing it.")


def print_cost(results, repeats):
    print(f"(3) the cost of a 429 across instances: 3 instances, 4 keys, requests round-robin over the instances, "
          f"each scenario {repeats} times (fresh instances, stand-in and prefix each time); per key, the mean per "
          f"repetition of the upstream's 429s / of the requests it got on the key after that key's first 429 "
          f"(within 60 s); worst = most 429s one key cost in one repetition")
    fmt = "  {:<7} {:<27} {:<7} {:>9} {:>9} {:>9} {:>9}  {:>5} {:>10} {:>9} {:>6}   {}"
    print(fmt.format("rule", "traffic", "state", "key 1", "key 2", "key 3", "key 4", "worst", "429s/rep", "upstr/rep",
                     "ms/rep", "client answers, all repetitions"))
    groups = {}
    for r in results:
        groups.setdefault((r["rule"], r["traffic"], r["gap_ms"], r["shared"]), []).append(r)
    verdict = {}
    for (rule, traffic, gap, shared), reps in groups.items():
        n = len(reps)
        cells = []
        for i in range(1, 5):
            a = sum(r["per_key"][i]["429"] for r in reps) / n
            b = sum(r["per_key"][i]["after_429"] for r in reps) / n
            cells.append(f"{a:.1f}/{b:.1f}")
        worst = max(r["per_key"][i]["429"] for r in reps for i in range(1, 5))
        sent = max(r["per_key"][i]["after_429"] for r in reps for i in range(1, 5))
        statuses = {}
        for r in reps:
            for code, count in r["statuses"].items():
                statuses[code] = statuses.get(code, 0) + count
        answers = " ".join(f"{code}x{count}" for code, count in sorted(statuses.items()))
        per = reps[0]["client_requests"]
        if traffic == "concurrent":
            label = f"3 concurrent, {per} req"
        elif gap:
            label = f"sequential {gap:g} ms apart, {per}"
        else:
            label = f"sequential, {per} req"
        print(fmt.format(rule, label, "shared" if shared else "alone", *cells, worst,
                         f"{sum(sum(r['per_key'][i]['429'] for i in range(1, 5)) for r in reps) / n:.1f}",
                         f"{sum(r['upstream_requests'] for r in reps) / n:.1f}",
                         f"{sum(r['wall_ms'] for r in reps) / n:.0f}", answers))
        if shared:
            verdict[(rule, label)] = worst if rule == "sticky" else sent
    print("  target (shared state): 1 upstream 429 per key, not 3 (sticky rule; with the first rule 1 by"
          " construction, and the requests sent on a key after its 429 are what an unshared bench costs: 0 wanted)")
    for (rule, label), v in verdict.items():
        what = f"worst key {v} 429s" if rule == "sticky" else f"most requests on a key after its 429: {v}"
        ok = v <= 1 if rule == "sticky" else v == 0
        print(f"    {rule:<7} {label:<27} {what:<42} {'ok' if ok else 'MISSED'}")


def git_commit():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml", "Cargo.lock"],
                               timeout=10).returncode
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


ARGS = None


def main():
    global ARGS
    if len(sys.argv) > 1 and sys.argv[1] == "subscriber":
        parser = argparse.ArgumentParser()
        parser.add_argument("subscriber")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--channel", required=True)
        parser.add_argument("--out", required=True)
        a = parser.parse_args()
        subscribe(a.port, a.channel, a.out)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "upstream":
        parser = argparse.ArgumentParser()
        parser.add_argument("upstream")
        parser.add_argument("--keys", required=True)
        serve_upstream(parser.parse_args().keys.split(","))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/keyrelay"))
    parser.add_argument("--redis-port", type=int, help="a running Redis to use (default: start one)")
    parser.add_argument("--rounds", type=int, default=200, help="(1)'s rounds")
    parser.add_argument("--round-deadline", type=float, default=2.0, help="(1): most seconds per measurement")
    parser.add_argument("--honour-deadline", type=float, default=300, help="(1): most seconds in all")
    parser.add_argument("--cost-requests", type=int, default=30, help="(3)'s requests per scenario")
    parser.add_argument("--cost-repeats", type=int, default=5, help="(3): repetitions of each scenario")
    parser.add_argument("--gaps-ms", default="3,10", help="(3): the pauses of the paced sequential runs")
    parser.add_argument("--parts", default="1,3", help="which parts to run: 1, 3 or 1,3")
    parser.add_argument("--label", help="what --bin was built from (default: the repository's HEAD)")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the keyrelays' stderr here")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    ARGS = args = parser.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin} is missing: cargo build --release")
    if args.rounds < 1 or args.cost_requests < 3 or args.cost_repeats < 1:
        sys.exit("need at least 1 round and 3 requests")
    parts = set(args.parts.split(","))
    workdir = tempfile.mkdtemp(prefix="keyrelay-shared-")
    redis = None
    shown = os.path.relpath(args.bin, ROOT)
    out = {"commit": args.label or git_commit(), "binary": args.bin if shown.startswith("..") else shown}
    failed = False
    try:
        redis = Redis(args.redis_port, workdir)
        out["redis_port"] = redis.port
        if "1" in parts:
            out["honour"] = honour(args, args.bin, redis, workdir)
            print_honour(out["honour"], out["commit"], out["binary"])
            print()
        if "3" in parts:
            results = []
            gaps = [float(g) for g in args.gaps_ms.split(",") if g]
            for shared in (True, False):
                shapes = [("sequential", 0)] + ([("sequential", g) for g in gaps] if shared else []) + [("concurrent", 0)]
                for rule in ("first", "sticky"):
                    for traffic, gap in shapes:
                        for _ in range(args.cost_repeats):
                            results.append(cost(args, args.bin, redis, workdir, rule, traffic, gap, shared))
            out["cost"] = results
            print_cost(results, args.cost_repeats)
    except (RuntimeError, OSError, http.client.HTTPException) as err:
        print(f"shared_state.py: FAILED: {err}", file=sys.stderr)
        failed = True
    finally:
        if redis:
            redis.stop()
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            for name in sorted(os.listdir(workdir)):
                path = os.path.join(workdir, name, "stderr.log")
                if os.path.exists(path):
                    shutil.copy(path, os.path.join(args.keep_logs, f"shared-{name}-stderr.log"))
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
