"""The official openai SDK through keyrelay: a Responses chain over several turns, each naming
the previous response with `previous_response_id`, streamed and not streamed in turn. Every
turn must succeed.

usage: openai_responses.py http://127.0.0.1:<port>"""

import openai

from common import CLIENT_KEY, TIMEOUT_SECS, answered, base_url, fail, made, run

TURNS = 6


def streamed_turn(client, previous, turn):
    """One streamed turn: its id from `response.created` (and `response.completed`), its text
    from the deltas."""
    created = completed = None
    text = ""
    stream = client.responses.create(
        model="gpt-4o",
        input=f"turn {turn}",
        previous_response_id=previous or openai.omit,
        stream=True,
    )
    with stream:
        for event in stream:
            if event.type == "response.created":
                created = event.response.id
            elif event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.completed":
                completed = event.response.id
    if not created or created != completed:
        fail(f"turn {turn}: response.created {created!r}, response.completed {completed!r}")
    return created, text


def flow():
    client = openai.OpenAI(
        api_key=CLIENT_KEY,
        base_url=f"{base_url()}/openai/v1",
        max_retries=0,
        timeout=TIMEOUT_SECS,
    )
    previous = None
    for turn in range(TURNS):
        if turn % 2 == 1:
            response_id, text = streamed_turn(client, previous, turn)
        else:
            response = client.responses.create(
                model="gpt-4o",
                input=f"turn {turn}",
                previous_response_id=previous or openai.omit,
            )
            response_id, text = response.id, response.output_text
        if not response_id.startswith("resp_") or not text:
            fail(f"turn {turn}: id {response_id!r}, text {text!r}")
        made(response_id)
        answered(turn, f"{'streamed' if turn % 2 == 1 else 'whole'}: {text}")
        previous = response_id


run(flow)
