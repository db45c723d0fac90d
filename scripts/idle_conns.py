#!/usr/bin/env python3
"""scripts/idle_conns.py: holds many idle keep-alive TCP connections to a server, for bench.sh (7).

Opens --conns connections to --addr with non-blocking connects (at most --in-flight handshakes
pending at once, all within --connect-secs), sends no byte on any of them, and prints

    HELD requested=N held=H failed=F connect_ms=T errors=ERRNO:count,...

on stdout as soon as they are open. It then holds them until a line (or EOF) arrives on stdin,
or --hold-secs pass, and prints

    RESULT requested=N held=H still_open=S closed_by_server=C failed=F connect_ms=T held_s=D

where still_open counts the held connections the server had neither closed nor answered.
Raises its own open-file limit (RLIMIT_NOFILE) as far as it needs and may.
"""

import argparse
import errno
import resource
import select
import selectors
import socket
import sys
import time


def raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def open_all(host, port, count, in_flight, connect_secs):
    """Returns (held sockets, failed count, {errno name: count}, seconds taken)."""
    sel = selectors.EpollSelector()
    held, errors = [], {}
    pending = 0
    started = 0
    failed = 0
    t0 = time.monotonic()
    deadline = t0 + connect_secs

    def fail(code):
        nonlocal failed
        failed += 1
        name = errno.errorcode.get(code, str(code))
        errors[name] = errors.get(name, 0) + 1

    while (started < count or pending) and time.monotonic() < deadline:
        while started < count and pending < in_flight:
            started += 1
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as e:
                fail(e.errno or 0)
                continue
            s.setblocking(False)
            code = s.connect_ex((host, port))
            if code == 0:
                held.append(s)
            elif code in (errno.EINPROGRESS, errno.EAGAIN):
                sel.register(s, selectors.EVENT_WRITE)
                pending += 1
            else:
                s.close()
                fail(code)
        timeout = max(0.0, min(0.1, deadline - time.monotonic()))
        for key, _ in sel.select(timeout):
            s = key.fileobj
            sel.unregister(s)
            pending -= 1
            code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                held.append(s)
            else:
                s.close()
                fail(code)
    # Whatever is still connecting or never started at the deadline counts as failed.
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        key.fileobj.close()
        fail(errno.ETIMEDOUT)
    for _ in range(count - started):
        fail(errno.ETIMEDOUT)
    sel.close()
    return held, failed, errors, time.monotonic() - t0


def closed_by_server(held):
    """How many held sockets are readable: the server closed, reset or answered them."""
    sel = selectors.EpollSelector()
    for s in held:
        sel.register(s, selectors.EVENT_READ)
    closed = len(sel.select(0))
    sel.close()
    return closed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True, help="host:port")
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--in-flight", type=int, default=256, help="handshakes pending at once")
    p.add_argument("--connect-secs", type=float, default=30.0)
    p.add_argument("--hold-secs", type=float, default=120.0)
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)

    limit = raise_nofile(a.conns + 64)
    if limit < a.conns + 16:
        print(f"idle_conns: open-file limit {limit} is too low for {a.conns} connections",
              file=sys.stderr)
        return 2

    held, failed, errors, took = open_all(host, int(port), a.conns, a.in_flight, a.connect_secs)
    errs = ",".join(f"{k}:{v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])) or "-"
    common = f"requested={a.conns} held={len(held)}"
    print(f"HELD {common} failed={failed} connect_ms={took * 1000:.0f} errors={errs}", flush=True)

    t_held = time.monotonic()
    select.select([sys.stdin], [], [], a.hold_secs)  # a line, EOF, or the time limit
    closed = closed_by_server(held)
    print(f"RESULT {common} still_open={len(held) - closed} closed_by_server={closed} "
          f"failed={failed} connect_ms={took * 1000:.0f} held_s={time.monotonic() - t_held:.1f}",
          flush=True)
    for s in held:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
