"""`request_hash` is how a resumed run finds its stored calls: its bytes must never drift."""

from __future__ import annotations

import base64

from safeturn.run.hashing import REQUEST_HASH_VERSION
from safeturn.run.store import request_hash
from safeturn.schema import Dialogue, GenerateParams, ImagePart, Message

PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
)


def test_request_hash_is_pinned_to_its_version() -> None:
    """Hashes computed by the release before the split of run/store.py (commit 69f09f0).

    A different hash here means stored runs would call their models again on `--resume`:
    keep the format, or add a new `REQUEST_HASH_VERSION` with a migration of stored hashes.
    """
    assert REQUEST_HASH_VERSION == 1
    dialogue = Dialogue(
        messages=[
            Message.system("be safe"),
            Message.user('héllo "quoted" ✓', images=[ImagePart(data=PIXEL)]),
            Message.assistant("ok"),
            Message.user("and\nthen?", images=[ImagePart(url="https://example.org/a.png")]),
        ]
    )
    params = GenerateParams(max_tokens=64, temperature=0.5)
    assert (
        request_hash("openai:gpt-x", dialogue, params, scope="s1/2/0")
        == "587ed92c58c0a4d4e21e7629eee10ccc2113fb514b36135a62f4cd50e8d0fa2c"
    )
    plain = Dialogue(messages=[Message.user("hi")])
    assert (
        request_hash("m", plain, GenerateParams())
        == "ff8d89e60a2d86d76ee7fe353dcd938649cbf8dfe243fe6295a20b3694dc1875"
    )
