"""`async with` for everything that holds connections, threads or weights.

Models, judges and moderators all have `aclose`; this mixin gives each the context-manager
pair on top of it, so callers write `async with load_judge(spec) as judge:` and cannot leak a
client on an error path.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncResource:
    """Mixin: `__aenter__` returns the object, `__aexit__` awaits its `aclose`."""

    async def aclose(self) -> None:
        """Release what the object holds; safe to call twice. Nothing by default."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
