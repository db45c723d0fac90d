"""What each official SDK does with a stream keyrelay ends with its "the upstream broke off"
event (and no clean end): each must raise an error carrying keyrelay's message (google-genai
3.6.1 raises errors.ServerError 502 UNAVAILABLE with it).

usage: broken_stream.py http://127.0.0.1:<port> openai|anthropic|gemini

Prints `CHUNKS <n>` (events the SDK yielded before it stopped) and `RAISED <type>: <message>`,
or `NO ERROR` when the SDK ended the stream quietly (and then fails)."""

import sys

from common import CLIENT_KEY, TIMEOUT_SECS, base_url, fail, run

KEYRELAY_WORDS = "broke off this stream"
# Clients kept alive for as long as their streams are read.
KEEP = []


def openai_stream():
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url()}/openai/v1", api_key=CLIENT_KEY,
                    max_retries=0, timeout=TIMEOUT_SECS)
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
    return (chunk for chunk in stream)


def anthropic_stream():
    from anthropic import Anthropic

    client = Anthropic(base_url=f"{base_url()}/anthropic", api_key=CLIENT_KEY,
                       max_retries=0, timeout=TIMEOUT_SECS)
    stream = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=64,
        messages=[{"role": "user", "content": "hi"}], stream=True)
    return (event for event in stream)


def gemini_stream():
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(
        base_url=f"{base_url()}/gemini", timeout=int(TIMEOUT_SECS * 1000),
        retry_options=types.HttpRetryOptions(attempts=1)))
    # The client closes its connections when it is collected: it must outlive the stream.
    KEEP.append(client)
    return client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")


def flow():
    which = sys.argv[2] if len(sys.argv) > 2 else ""
    streams = {"openai": openai_stream, "anthropic": anthropic_stream, "gemini": gemini_stream}
    if which not in streams:
        fail(f"usage: {sys.argv[0]} <url> openai|anthropic|gemini")
    chunks = 0
    try:
        for _ in streams[which]():
            chunks += 1
    except Exception as error:  # noqa: BLE001 (what the SDK raises is the finding)
        print(f"CHUNKS {chunks}", flush=True)
        message = " ".join(str(error).split())
        print(f"RAISED {type(error).__module__}.{type(error).__name__}: {message}", flush=True)
        if KEYRELAY_WORDS not in str(error):
            fail(f"{which} raised without keyrelay's message: {message}")
        return
    print(f"CHUNKS {chunks}", flush=True)
    print("NO ERROR", flush=True)
    fail(f"{which} took the broken stream for a complete one ({chunks} chunks)")


run(flow)
