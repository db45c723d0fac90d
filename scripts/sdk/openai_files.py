"""The official openai SDK through keyrelay: a file upload, then six chat completions that name
the file. Every use must succeed, whichever key keyrelay's rotation would have picked.

usage: openai_files.py http://127.0.0.1:<port>"""

import openai

from common import CLIENT_KEY, TIMEOUT_SECS, answered, base_url, fail, made, run

USES = 6


def flow():
    client = openai.OpenAI(
        api_key=CLIENT_KEY,
        base_url=f"{base_url()}/openai/v1",
        max_retries=0,
        timeout=TIMEOUT_SECS,
    )
    uploaded = client.files.create(
        file=("notes.jsonl", b'{"note": "the answer is 42"}\n', "application/jsonl"),
        purpose="user_data",
    )
    if not uploaded.id.startswith("file-"):
        fail(f"files.create gave no file id: {uploaded!r}")
    made(uploaded.id)
    for use in range(USES):
        completion = client.chat.completions.create(
            model="gpt-4o",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "file", "file": {"file_id": uploaded.id}},
                        {"type": "text", "text": f"What does the file say? ({use})"},
                    ],
                }
            ],
        )
        text = completion.choices[0].message.content
        if not text:
            fail(f"use {use}: an empty answer: {completion!r}")
        answered(use, text)


run(flow)
