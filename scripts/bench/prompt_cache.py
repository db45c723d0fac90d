#!/usr/bin/env python3
"""scripts/bench/prompt_cache.py: issue 19's prompt-cache workload, SESSION_AFFINITY on against off.

Standalone:  python3 scripts/bench/prompt_cache.py [--bin target/release/keyrelay]
             (build first: cargo build --release; about 10-30 s; everything on 127.0.0.1)
From scripts/bench.sh: section (9), BENCH_AFFINITY=1 scripts/bench.sh.

A stand-in upstream (threaded http.server, 127.0.0.1, port 0) answers POST /v1/chat/completions
and caches prompt prefixes per key the way OpenAI does: per key (the Authorization: Bearer value
keyrelay injected) it keeps every prompt seen, and a request's usage.prompt_tokens_details.
cached_tokens is the length of the longest earlier prompt on that key that is a prefix of this
one. Tokens are the whitespace-separated words of the messages' contents, in order, the system
prompt included.

For each mode (on, then off) a fresh stand-in and a fresh keyrelay (4 keys, PORT=0, its own empty
working directory so no .env is read) serve 50 conversations x 8 turns, 16 conversations at a time
(one thread and one keep-alive connection each). Every conversation shares one ~300-word system
prompt and has its own first user message; each turn appends the previous assistant answer and a
new user question, as a chat client does. Printed per mode: the share of turns 2-8 whose previous
turn's whole prompt was cached (cached_tokens >= the previous turn's prompt_tokens), the cached
share of all input tokens, the busiest key's share of requests (and as a multiple of a fair 1/keys),
requests per key, how many turns stayed on the previous turn's key, and keyrelay's
keyrelay_affinity_total{kind="session"} counters. Targets: on >= 95 % of turns (off ~ 25 %),
busiest key <= 1.5x fair. Turns that missed in "on" are listed with the keys that served them.
Exit status 0 whether or not the targets are met; 1 when the run itself failed (an error answer,
a timeout, keyrelay not starting).
"""

import argparse
import hashlib
import http.client
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "gpt-4o-mini"
CHAT = "/openai/v1/chat/completions"

WORDS = (
    "account adapter answer archive balance batch buffer cache channel client cluster column "
    "commit config context counter cursor deadline decoder digest domain driver encoder entry "
    "event field filter format frame gateway handler header index kernel ledger limit listener "
    "metric module network offset packet parser payload pipeline policy pool prefix process "
    "profile proxy queue quota record region replica request resource response retry route "
    "sample schema scope segment server session shard signal socket source stream string table "
    "task tenant thread ticket timeout token trace upstream value vector window worker"
).split()


def words(seed, n):
    """n words, deterministic in seed."""
    out = []
    block = b""
    i = 0
    while len(out) < n:
        if not block:
            block = hashlib.sha256(f"{seed}/{i}".encode()).digest()
            i += 1
        out.append(WORDS[block[0] % len(WORDS)])
        block = block[1:]
    return " ".join(out)


SYSTEM_PROMPT = (
    "You are the support assistant of a company that runs an API gateway. Answer in plain text. "
    + words("system", 280)
)


def tokens_of(messages):
    """The prompt's tokens: whitespace words of every message's content, in order."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts: their text
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return tuple(" ".join(parts).split())


# ---------------------------------------------------------------------------------------------
# The stand-in upstream


class Upstream:
    """Prompt prefixes cached per key; every request recorded."""

    def __init__(self, keys):
        self.keys = keys
        self.lock = threading.Lock()
        self.prompts = {}  # key -> [tokens of each prompt seen]
        self.log = []  # (key index or -1, conversation tag, prompt_tokens, cached_tokens)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def answer(self, auth, messages):
        key = auth[len("Bearer "):] if auth.startswith("Bearer ") else auth
        tokens = tokens_of(messages)
        with self.lock:
            seen = self.prompts.setdefault(key, [])
            cached = 0
            for earlier in seen:
                if cached < len(earlier) <= len(tokens) and tokens[: len(earlier)] == earlier:
                    cached = len(earlier)
            seen.append(tokens)
            index = self.keys.index(key) if key in self.keys else -1
            self.log.append((index, len(tokens), cached))
        return index, len(tokens), cached

    def handler(self):
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path != "/v1/chat/completions":
                    return self.reply(404, {"error": {"message": "no such path", "type": "invalid_request_error"}})
                try:
                    request = json.loads(raw)
                    messages = request["messages"]
                except (ValueError, KeyError, TypeError):
                    return self.reply(400, {"error": {"message": "bad body", "type": "invalid_request_error"}})
                index, prompt, cached = upstream.answer(self.headers.get("Authorization", ""), messages)
                # The answer depends on the prompt only, like a model at temperature 0.
                digest = hashlib.sha256(" ".join(tokens_of(messages)).encode()).hexdigest()
                content = "Here is what I found. " + words(digest, 40 + int(digest[:2], 16) % 40)
                completion = len(content.split())
                self.reply(200, {
                    "id": "chatcmpl-" + digest[:24],
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": MODEL + "-2024-07-18",
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                    },
                    # Which pool key served it, by position (keyrelay masks a key quoted in a body).
                    "system_fingerprint": f"fp_key{index}",
                })

        return Handler


# ---------------------------------------------------------------------------------------------
# keyrelay


def start_keyrelay(binary, keys, upstream_port, affinity, workdir, timeout):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PORT": "0",
        "HOST": "127.0.0.1",
        "OPENAI_API_KEYS": ",".join(keys),
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}",
        "SESSION_AFFINITY": affinity,
        "LOG_LEVEL": "info",  # "listening on" is an info line
    }
    log_path = os.path.join(workdir, "stderr.log")
    log_file = open(log_path, "wb")
    proc = subprocess.Popen([binary], env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=log_file)
    log_file.close()
    deadline = time.monotonic() + timeout
    pattern = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
    while time.monotonic() < deadline:
        with open(log_path, "rb") as f:
            found = pattern.search(f.read())
        if found:
            return proc, int(found.group(1)), log_path
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    with open(log_path, "rb") as f:
        tail = f.read()[-600:].decode(errors="replace")
    raise RuntimeError(f"keyrelay (SESSION_AFFINITY={affinity}) did not start: {tail}")


def stop_keyrelay(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def affinity_counts(port):
    """keyrelay_affinity_total{kind="session"} by outcome, from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()
    counts = {}
    for line in text.splitlines():
        if line.startswith("keyrelay_affinity_total{") and 'kind="session"' in line:
            outcome = re.search(r'outcome="([a-z]+)"', line)
            if outcome:
                counts[outcome.group(1)] = counts.get(outcome.group(1), 0) + int(float(line.split()[-1]))
    return counts


# ---------------------------------------------------------------------------------------------
# The client


def conversation_turns(c, turns):
    """The first user message and the later questions of conversation c."""
    first = f"Conversation {c}: I run tenant t-{c:03d} on the gateway. " + words(f"first/{c}", 60)
    later = [f"Question {t} of conversation {c}: " + words(f"q/{c}/{t}", 25) for t in range(2, turns + 1)]
    return [first] + later


def run_conversation(port, c, turns, timeout, deadline, results, errors):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    try:
        for t, question in enumerate(conversation_turns(c, turns), start=1):
            if time.monotonic() > deadline:
                errors.append(f"conversation {c} turn {t}: run deadline passed")
                return
            messages.append({"role": "user", "content": question})
            body = json.dumps({"model": MODEL, "messages": messages, "temperature": 0.2,
                               "max_tokens": 256}).encode()
            conn.request("POST", CHAT, body=body, headers={
                "Content-Type": "application/json",
                "Authorization": "Bearer sk-client-placeholder",  # keyrelay strips it
            })
            reply = conn.getresponse()
            data = reply.read()
            if reply.status != 200:
                errors.append(f"conversation {c} turn {t}: {reply.status} {data[:200]!r}")
                return
            answer = json.loads(data)
            usage = answer["usage"]
            key = int(answer["system_fingerprint"].removeprefix("fp_key"))
            results.append((c, t, key, usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]))
            messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
    except Exception as e:  # noqa: BLE001 - reported, and the run fails
        errors.append(f"conversation {c}: {type(e).__name__}: {e}")
    finally:
        conn.close()


def run_mode(args, keys, affinity):
    upstream = Upstream(keys)
    upstream.start()
    workdir = tempfile.mkdtemp(prefix=f"keyrelay-prompt-cache-{affinity}.")
    proc, port, log_path = start_keyrelay(args.bin, keys, upstream.port, affinity, workdir, 10)
    results, errors = [], []
    started = time.monotonic()
    deadline = started + args.deadline_secs
    try:
        work = queue.Queue()
        for c in range(args.conversations):
            work.put(c)

        def worker():
            while True:
                try:
                    c = work.get_nowait()
                except queue.Empty:
                    return
                run_conversation(port, c, args.turns, args.timeout, deadline, results, errors)

        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.monotonic() - started
        counts = affinity_counts(port)
    finally:
        stop_keyrelay(proc)
        upstream.stop()
        if args.keep_logs:
            shutil.copy(log_path, os.path.join(args.keep_logs, f"prompt-cache-keyrelay-{affinity}.log"))
        shutil.rmtree(workdir, ignore_errors=True)
    return summarise(args, keys, affinity, results, errors, upstream.log, counts, wall)


def summarise(args, keys, affinity, results, errors, upstream_log, counts, wall):
    by_turn = {(c, t): (key, prompt, cached) for c, t, key, prompt, cached in results}
    later = hits = stayed = 0
    misses = []
    for (c, t), (key, prompt, cached) in sorted(by_turn.items()):
        if t == 1 or (c, t - 1) not in by_turn:
            continue
        prev_key, prev_prompt, _ = by_turn[(c, t - 1)]
        later += 1
        stayed += key == prev_key
        if cached >= prev_prompt:
            hits += 1
        else:
            misses.append((c, t, [by_turn[(c, u)][0] for u in range(1, t + 1)], prev_prompt, cached))
    per_key = [0] * len(keys)
    unknown = 0
    for index, _, _ in upstream_log:  # the stand-in's own record of Authorization
        if index < 0:
            unknown += 1
        else:
            per_key[index] += 1
    total = sum(per_key) + unknown
    first_turns = [0] * len(keys)
    for (c, t), (key, _, _) in by_turn.items():
        if t == 1 and 0 <= key < len(keys):
            first_turns[key] += 1
    prompt_tokens = sum(p for _, _, _, p, _ in results)
    cached_tokens = sum(x for _, _, _, _, x in results)
    return {
        "affinity": affinity,
        "requests": total,
        "ok": len(results),
        "expected": args.conversations * args.turns,
        "errors": errors,
        "later": later,
        "hits": hits,
        "stayed": stayed,
        "misses": misses,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "per_key": per_key,
        "first_turns": first_turns,
        "unknown_key": unknown,
        "busiest": max(per_key) / total if total else 0.0,
        "counts": counts,
        "wall": wall,
    }


def pct(a, b):
    return f"{100 * a / b:.1f} %" if b else "-"


def print_table(args, keys, modes, commit, binary):
    fair = 1 / len(keys)
    print(f"prompt-cache workload (issue 19), {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
          f"keyrelay {commit}, {os.cpu_count()} CPUs")
    print(f"{args.conversations} conversations x {args.turns} turns, {args.concurrency} at a time, "
          f"{len(keys)} keys; {binary}")
    print(f"shared system prompt {len(SYSTEM_PROMPT.split())} words, distinct first user message "
          f"{len(conversation_turns(0, 2)[0].split())} words, answers 41-80 words, questions 30 words")
    print()
    row = "{:<46} " + "{:>22} " * len(modes) + "  {}"
    names = [m["affinity"] for m in modes]
    print(row.format("SESSION_AFFINITY", *names, "target").rstrip())
    by = {m["affinity"]: m for m in modes}
    on, off = by.get("on"), by.get("off")

    def cells(f):
        return [f(m) for m in modes]

    def verdict(ok):
        return "ok" if ok else "MISS"

    goal = f"off ~ {100 * fair:.0f} %"
    if on:
        goal = f"{verdict(on['later'] and on['hits'] / on['later'] >= 0.95)} on >= 95 %, " + goal
    print(row.format("turns 2-8 with the previous prompt cached",
                     *cells(lambda m: f"{m['hits']}/{m['later']} {pct(m['hits'], m['later'])}"), goal))
    print(row.format("cached share of input tokens",
                     *cells(lambda m: pct(m["cached_tokens"], m["prompt_tokens"])), "reported"))
    goal = ""
    if on:
        goal = f"{verdict(on['busiest'] <= 1.5 * fair)} on <= 1.5x fair"
    print(row.format("busiest key's share of requests",
                     *cells(lambda m: f"{100 * m['busiest']:.1f} % ({m['busiest'] / fair:.2f}x fair)"), goal))
    print(row.format("requests per key (stand-in's Authorization)",
                     *cells(lambda m: "/".join(map(str, m["per_key"])) + (f" +{m['unknown_key']}?" if m["unknown_key"] else "")),
                     ""))
    print(row.format("first turns per key (round robin)",
                     *cells(lambda m: "/".join(map(str, m["first_turns"]))), ""))
    print(row.format("turns 2-8 on the previous turn's key",
                     *cells(lambda m: f"{m['stayed']}/{m['later']} {pct(m['stayed'], m['later'])}"), ""))
    print(row.format("session affinity hit/moved/learned (/metrics)",
                     *cells(lambda m: "/".join(str(m["counts"].get(k, 0)) for k in ("hit", "moved", "learned"))),
                     ""))
    print(row.format("answered 200 / sent", *cells(lambda m: f"{m['ok']}/{m['expected']}"),
                     verdict(all(m["ok"] == m["expected"] and not m["errors"] for m in modes))))
    print(row.format("wall time s", *cells(lambda m: f"{m['wall']:.1f}"), ""))
    for m in modes:
        for e in m["errors"][:10]:
            print(f"  error ({m['affinity']}): {e}")
    if on and on["misses"]:
        print()
        print(f"turns that missed the cache with affinity on ({len(on['misses'])}; keys by position, turn 1 first):")
        for c, t, served, prev_prompt, cached in on["misses"][:20]:
            print(f"  conversation {c} turn {t}: keys {'-'.join(map(str, served))}, "
                  f"previous prompt {prev_prompt} tokens, cached {cached}")
    print()
    print("cached = cached_tokens >= the previous turn's prompt_tokens (the stand-in caches, per key, every "
          "prompt it saw; cached_tokens = the longest one that is a prefix of this prompt, in words).")


def git_commit():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml", "Cargo.lock"], timeout=10).returncode
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/keyrelay"))
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--modes", default="on,off", help="SESSION_AFFINITY values, in order")
    parser.add_argument("--timeout", type=float, default=30, help="seconds per request")
    parser.add_argument("--deadline-secs", type=float, default=120, help="most seconds per mode")
    parser.add_argument("--label", help="what --bin was built from, for the table (default: the repository's HEAD)")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy keyrelay's stderr here")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    args.bin = os.path.abspath(args.bin)  # keyrelay runs in a directory of its own
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin} is missing: cargo build --release")
    if args.conversations < 1 or args.turns < 2 or args.concurrency < 1 or args.keys < 1:
        sys.exit("need at least 1 conversation, 2 turns, 1 thread and 1 key")
    keys = [f"sk-bench-key-{i + 1:04d}" for i in range(args.keys)]
    modes = [run_mode(args, keys, mode) for mode in args.modes.split(",")]
    binary = os.path.abspath(args.bin)
    if binary.startswith(ROOT + os.sep):
        binary = os.path.relpath(binary, ROOT)
    print_table(args, keys, modes, args.label or git_commit(), binary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(modes, f, indent=1)
    failed = any(m["errors"] or m["ok"] != m["expected"] for m in modes)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
