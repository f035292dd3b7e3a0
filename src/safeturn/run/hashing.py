"""The key of one model call: how a resumed run finds the calls it already made.

Every stored call carries `request_hash(...)`; `--resume` and every worker look calls up by it.
A change to a single byte of the key makes every stored run call its model again, so the
format is versioned: `REQUEST_HASH_VERSION` names it, and a test pins the hash of a fixed
request. A new format needs a new version and a migration of the stored hashes, never an edit.
"""

from __future__ import annotations

import functools
import hashlib
import json
from json.encoder import encode_basestring as _quote  # json.dumps's, with ensure_ascii=False

from safeturn.schema import Dialogue, GenerateParams, ImagePart, Message, TextPart

REQUEST_HASH_VERSION = 1
"""The key format below; stored runs resume only under the format they were written with."""


@functools.lru_cache(maxsize=256)
def _params_json(params: GenerateParams) -> str:
    return json.dumps(params.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)


def request_hash(model: str, dialogue: Dialogue, params: GenerateParams, *, scope: str = "") -> str:
    """A stable key of one call: images enter by content hash, not by path or bytes.

    `scope` says *which* call this is (sample, turn, attempt): two samples with the same
    dialogue are two calls with two rows, or one of them would vanish from its results.
    The key is the sha256 of `json.dumps({"messages": [{"parts": [text | {"image": hash}],
    "role"}], "model", "params", "scope"}, sort_keys=True, ensure_ascii=False)`, written out
    by hand here (a third of the cost); keep it byte-identical, or stored runs stop resuming.
    """
    messages = ", ".join([_message_json(message) for message in dialogue.messages])
    blob = (
        f'{{"messages": [{messages}], "model": {_quote(model)}, '
        f'"params": {_params_json(params)}, "scope": {_quote(scope)}}}'
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _message_json(message: Message) -> str:
    parts = ", ".join(
        [
            _quote(part.text) if isinstance(part, TextPart) else f'{{"image": {_image_ref(part)}}}'
            for part in message.parts
        ]
    )
    return f'{{"parts": [{parts}], "role": {_quote(message.role)}}}'


def _image_ref(part: ImagePart) -> str:
    """A remote image by its URL (never fetched), any other by the sha256 of its bytes."""
    return _quote(part.url if part.url is not None and part.is_remote else part.sha256())
