"""The one interface every model backend implements.

`ChatModel` is a Protocol so users can plug in their own objects; the bundled backends share
`BaseChatModel`, which gives them a bounded-concurrency `generate_batch` and `async with`
(closing the model on the way out) for free.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from safeturn.resources import AsyncResource
from safeturn.schema import Dialogue, GenerateParams, Reply


@runtime_checkable
class ChatModel(Protocol):
    """Anything that answers a dialogue.

    `aclose` releases what the model holds. Every bundled backend (`BaseChatModel`) is also an
    async context manager that awaits `aclose` on exit, so `async with load_model(spec) as m:`
    cannot leak a client; the Protocol asks only for `aclose`, so plain user objects still fit.

    Examples:
        >>> from safeturn.models import load_model
        >>> from safeturn.schema import Dialogue, Message
        >>> model = load_model("scripted:echo")
        >>> import asyncio
        >>> d = Dialogue(messages=[Message.user("hi")])
        >>> asyncio.run(model.generate(d, GenerateParams())).text
        'hi'
    """

    name: str
    """The spec string that built the model; recorded with every call."""

    async def generate(self, dialogue: Dialogue, params: GenerateParams) -> Reply:
        """Answer the last user message of `dialogue`."""
        ...

    async def generate_batch(
        self, dialogues: Sequence[Dialogue], params: GenerateParams
    ) -> list[Reply]:
        """Answer several dialogues, in order; backends batch where they can."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and memory."""
        ...


class BaseChatModel(AsyncResource, ABC):
    """Shared plumbing for the bundled backends; `async with model:` closes it on exit."""

    name: str
    max_concurrency: int = 8

    @abstractmethod
    async def generate(self, dialogue: Dialogue, params: GenerateParams) -> Reply:
        """Answer the last user message of `dialogue`."""

    async def generate_batch(
        self, dialogues: Sequence[Dialogue], params: GenerateParams
    ) -> list[Reply]:
        """Run `generate` over the dialogues with at most `max_concurrency` in flight."""
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(dialogue: Dialogue) -> Reply:
            async with gate:
                return await self.generate(dialogue, params)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(d)) for d in dialogues]
        return [t.result() for t in tasks]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
