"""Content-addressed caches: the reason a new turn costs one embedding, not a whole dialogue.

OpenAI-style callers resend the entire conversation with every request. Keying everything the
moderator computes by a hash of its *content* (a message's text, an image's bytes) means a
resent turn is a cache hit wherever it came from: the same conversation, another conversation
that happens to share a message, or a request whose images arrive as data URLs instead of paths.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from safeturn.schema import ImagePart, Message, TextPart

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
FloatArray = npt.NDArray[np.float32]


class LruCache(Generic[K, V]):
    """A thread-safe least-recently-used map; `capacity=None` never evicts (training runs).

    Args:
        capacity: Most entries kept; None for unbounded.
    """

    def __init__(self, capacity: int | None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"cache capacity must be >= 1 or None, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value for `key` (marking it recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Store `value`, evicting the least recently used entry when full."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if self.capacity is not None and len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


def text_digest(text: str) -> str:
    """The cache key of a text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_digest(image: ImagePart, label: str) -> str:
    """The cache key of an image: sha256 of its bytes, or of the URL for a remote image."""
    if image.is_remote:
        assert image.url is not None
        return "url:" + hashlib.sha256(image.url.encode("utf-8")).hexdigest()
    return image.sha256(label=label)


def message_digest(message: Message, label: str) -> str:
    """The content hash of a whole message: role, text parts and image hashes, in order.

    Every field is length-prefixed, so no text (NUL bytes included) can spell the key of a
    different message: the caches keyed by these digests are shared across conversations.
    """
    hasher = hashlib.sha256()
    fields = [b"r" + message.role.encode("ascii")]
    for part in message.parts:
        if isinstance(part, TextPart):
            fields.append(b"t" + part.text.encode("utf-8"))
        else:
            fields.append(b"i" + image_digest(part, label).encode("ascii"))
    for field in fields:
        hasher.update(len(field).to_bytes(8, "big") + field)
    return hasher.hexdigest()


class CachedEncoder:
    """Text → unit vector through a content-addressed cache; counts what really got embedded.

    Args:
        embed: Embeds a batch of texts (the MiniLM encoder in production, a stub in tests).
        dim: The vector size.
        capacity: Most texts kept (None: unbounded, for training).
        scored: How many of the last columns are scores rather than embedding coordinates
            (the harm reader's logit): several images' vectors are pooled by their mean, their
            scores by the max, so benign images cannot dilute one harmful image's score.
    """

    def __init__(
        self,
        embed: Callable[[Sequence[str]], FloatArray],
        dim: int,
        *,
        capacity: int | None = 20_000,
        scored: int = 0,
    ) -> None:
        if not 0 <= scored <= dim:
            raise ValueError(f"scored columns must be within the {dim}-d vector, got {scored}")
        self._embed = embed
        self.dim = dim
        self.scored = scored
        self.cache: LruCache[str, FloatArray] = LruCache(capacity)
        self.embedded = 0
        """How many texts went through the encoder (cache misses); tests and benchmarks read it."""

    def encode(self, texts: Sequence[str]) -> list[FloatArray]:
        """One vector per text; misses are embedded together in one batch.

        An empty (or whitespace-only) text maps to the zero vector without an encoder call:
        an image-only turn says nothing in words, and the features treat it that way.
        """
        keys = [text_digest(t) for t in texts]
        found: dict[str, FloatArray] = {}
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if not text.strip():
                found[key] = np.zeros(self.dim, dtype=np.float32)
                continue
            hit = self.cache.get(key)
            if hit is None:
                missing[key] = text
            else:
                found[key] = hit
        if missing:
            vectors = self._embed(list(missing.values()))
            self.embedded += len(missing)
            for key, vector in zip(missing, vectors, strict=True):
                vector = np.asarray(vector, dtype=np.float32)
                vector.setflags(write=False)
                self.cache.put(key, vector)
                found[key] = vector
        return [found[k] for k in keys]

    def prime(self, texts: Sequence[str], *, batch: int = 512) -> None:
        """Embed every uncached text now, in large batches (training and evaluation)."""
        todo = list(
            dict.fromkeys(t for t in texts if t.strip() and text_digest(t) not in self.cache)
        )
        for start in range(0, len(todo), batch):
            self.encode(todo[start : start + batch])
