"""The official anthropic SDK through keyrelay: a file upload (Files API, beta), then a few
messages that name the file as a document. Every step must succeed.

usage: anthropic_files.py http://127.0.0.1:<port>"""

import anthropic

from common import CLIENT_KEY, TIMEOUT_SECS, answered, base_url, fail, made, run

BETA = "files-api-2025-04-14"
USES = 3


def flow():
    client = anthropic.Anthropic(
        api_key=CLIENT_KEY,
        base_url=f"{base_url()}/anthropic",
        max_retries=0,
        timeout=TIMEOUT_SECS,
    )
    uploaded = client.beta.files.upload(
        file=("notes.txt", b"The answer is 42.\n", "text/plain"), betas=[BETA]
    )
    if not uploaded.id.startswith("file_"):
        fail(f"files.upload gave no file id: {uploaded!r}")
    made(uploaded.id)
    for use in range(USES):
        message = client.beta.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=64,
            betas=[BETA],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "file", "file_id": uploaded.id}},
                        {"type": "text", "text": f"What does the file say? ({use})"},
                    ],
                }
            ],
        )
        text = "".join(block.text for block in message.content if block.type == "text")
        if not text:
            fail(f"use {use}: no text: {message!r}")
        answered(use, text)


run(flow)
