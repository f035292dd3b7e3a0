"""The guard proxy's settings, apart from the server so the CLI can build them cheaply.

`safeturn` imports its sub-commands at start-up; keeping FastAPI and the wire models out of
this module saves every command (not only `guard serve`) about 0.3 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safeturn.errors import PrerequisiteError
from safeturn.redact import redact_url_credentials
from safeturn.schema import DEFAULT_LIMITS, ImageLimits

if TYPE_CHECKING:
    from safeturn.guard.guarded import FailMode, GuardMode

TOKEN_ENV = "SAFETURN_GUARD_TOKEN"
"""The environment variable holding the bearer token clients must send."""


@dataclass(frozen=True)
class ProxySettings:
    """Everything `create_app` needs; the command builds it from flags and the environment."""

    upstream: str
    """Model spec of the upstream, normally `openai:http://host:port/v1#model`."""
    moderator: str = "embedded"
    mode: GuardMode = "inject"
    on_error: FailMode = "closed"
    screen_replies: bool = False
    token: str | None = field(default=None, repr=False)
    """Bearer token clients must send; None only together with `no_auth`."""
    no_auth: bool = False
    max_body_bytes: int = 32 * 1024 * 1024
    image_limits: ImageLimits = DEFAULT_LIMITS
    upstream_timeout_s: float = 120.0
    upstream_retries: int = 1
    upstream_key_env: str = "OPENAI_API_KEY"
    """Name of the variable holding the upstream's API key (the key itself is never held)."""
    moderator_timeout_s: float = 10.0
    default_max_tokens: int = 1024
    database: str | None = None
    """Run database (URL or SQLite path) for decision records; None records nothing."""
    store_content: bool = False
    """Also store message and reply text in decision records (images as sha256 only)."""
    expose_scores: bool = False
    """Send risk scores and strategy to clients (they help an attacker tune a jailbreak)."""
    served_model: str | None = None
    """The model name clients use; default: the upstream's model name."""
    policies: Path | None = None

    def __post_init__(self) -> None:
        if self.token is None and not self.no_auth:
            raise PrerequisiteError(
                f"the guard proxy needs a bearer token: set {TOKEN_ENV}, or pass --no-auth "
                "(only allowed on a loopback address)"
            )
        if self.token is not None and len(self.token) < 16:
            raise PrerequisiteError(f"{TOKEN_ENV} is too short: use at least 16 characters")

    def description(self) -> dict[str, Any]:
        """A secret-free description of the server, stored as its run's config."""
        return {
            "upstream": redact_url_credentials(self.upstream),
            "moderator": self.moderator,
            "mode": self.mode,
            "on_error": self.on_error,
            "screen_replies": self.screen_replies,
            "auth": not self.no_auth,
            "max_body_bytes": self.max_body_bytes,
            "upstream_timeout_s": self.upstream_timeout_s,
            "moderator_timeout_s": self.moderator_timeout_s,
            "store_content": self.store_content,
            "served_model": self.served_name(),
            "policies": None if self.policies is None else str(self.policies),
        }

    def served_name(self) -> str:
        """The one model name this proxy answers to."""
        if self.served_model:
            return self.served_model
        prefix, _, rest = self.upstream.partition(":")
        if prefix == "openai" and "#" in rest:
            return rest.partition("#")[2]
        # Never show clients an internal spec (paths, hosts): only its last path component.
        return redact_url_credentials(self.upstream).rsplit("/", 1)[-1]
