"""The official google-genai SDK through keyrelay: a resumable file upload (the start request,
then the bytes sent to the X-Goog-Upload-URL keyrelay hands back), a few generate_content calls
that name the file, a cached content made from it, and generate_content calls that name the
cache. Every step must succeed.

usage: gemini_upload.py http://127.0.0.1:<port> [api-version]

Without an api-version the SDK picks its own (`v1` in google-genai 3.6.1:
GOOGLE_AI_API_DEFAULT_VERSION in google/genai/_api_client.py)."""

import os
import sys
import tempfile

from google import genai
from google.genai import types

from common import CLIENT_KEY, TIMEOUT_SECS, answered, base_url, fail, made, run

MODEL = "gemini-2.5-flash"
USES = 3


def flow():
    client = genai.Client(
        api_key=CLIENT_KEY,
        http_options=types.HttpOptions(
            base_url=f"{base_url()}/gemini",
            timeout=int(TIMEOUT_SECS * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),
            api_version=sys.argv[2] if len(sys.argv) > 2 else None,
        ),
    )
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "notes.txt")
        with open(path, "w", encoding="utf-8") as notes:
            notes.write("The answer is 42.\n")
        uploaded = client.files.upload(file=path)
    if not uploaded.name or not uploaded.name.startswith("files/") or not uploaded.uri:
        fail(f"files.upload gave no file: {uploaded!r}")
    made(uploaded.name)
    for use in range(USES):
        reply = client.models.generate_content(
            model=MODEL, contents=[uploaded, f"What does the file say? ({use})"]
        )
        if not reply.text:
            fail(f"use {use}: no text: {reply!r}")
        answered(f"file {use}", reply.text)
    cache = client.caches.create(
        model=MODEL,
        config=types.CreateCachedContentConfig(contents=[uploaded], ttl="600s"),
    )
    if not cache.name or not cache.name.startswith("cachedContents/"):
        fail(f"caches.create gave no cached content: {cache!r}")
    made(cache.name)
    for use in range(USES):
        reply = client.models.generate_content(
            model=MODEL,
            contents=f"And with the cache? ({use})",
            config=types.GenerateContentConfig(cached_content=cache.name),
        )
        if not reply.text:
            fail(f"cached use {use}: no text: {reply!r}")
        answered(f"cache {use}", reply.text)


run(flow)
