"""What the SDK scripts share: keyrelay's base URL, failing loudly, and the lines the Rust
tests (tests/it/sdk.rs) read back: `ID <id>` for each object the flow made, `ANSWER <step>:
<text>` for each answer, `OK <script>` at the end; `FAIL <script>: <why>` on stderr otherwise."""

import os
import sys
import traceback

# Short enough that a hung request fails the script well inside the Rust test's limit.
TIMEOUT_SECS = 20.0
# The credential the client sends; keyrelay strips it and injects a pool key.
CLIENT_KEY = "client-key-keyrelay-strips"


def base_url():
    """keyrelay's base URL (`http://127.0.0.1:<port>`): argv[1], else $KEYRELAY_URL."""
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("KEYRELAY_URL", "")
    # The SDKs talk to keyrelay on this machine only, never to the providers themselves.
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        fail(f"usage: {sys.argv[0]} http://127.0.0.1:<port> (or KEYRELAY_URL); got {url!r}")
    return url.rstrip("/")


def fail(message):
    print(f"FAIL {os.path.basename(sys.argv[0])}: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def made(object_id):
    print(f"ID {object_id}", flush=True)


def answered(step, text):
    print(f"ANSWER {step}: {text}", flush=True)


def run(flow):
    """Runs `flow()`; an exception from the SDK becomes a one-line failure with its type."""
    try:
        flow()
    except SystemExit:
        raise
    except Exception as error:  # noqa: BLE001 (any SDK error fails the flow, named)
        traceback.print_exc()
        fail(f"{type(error).__module__}.{type(error).__name__}: {error}")
    print(f"OK {os.path.basename(sys.argv[0])}", flush=True)
