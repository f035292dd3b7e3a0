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
    max_request_pixels: int = 48_000_000
    """Sum of width × height over one request's images, checked from headers (413 over it)."""
    image_deadline_s: float = 3.0
    """Longest the moderator waits for a request's new images; then they count as unscreened
    (`on_error` decides what that means). At most half of `moderator_timeout_s` is used, so
    the text is always screened in time."""
    image_workers: int = 2
    """Threads analysing images for all requests together."""
    ocr_threads: int | None = 1
    """ONNX Runtime threads per OCR / NudeNet call; None: `SAFETURN_OCR_THREADS` or all cores."""
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
        if self.image_deadline_s <= 0:
            raise PrerequisiteError(f"the image deadline must be > 0; got {self.image_deadline_s}")
        if self.max_request_pixels < 1 or self.image_workers < 1:
            raise PrerequisiteError("the request pixel budget and image workers must be >= 1")
        if self.ocr_threads is not None and self.ocr_threads < 1:
            raise PrerequisiteError(f"OCR threads must be >= 1; got {self.ocr_threads}")

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
            "max_request_pixels": self.max_request_pixels,
            "image_deadline_s": self.image_deadline_s,
            "image_workers": self.image_workers,
            "ocr_threads": self.ocr_threads,
            "store_content": self.store_content,
            "served_model": self.served_name(),
            "policies": None if self.policies is None else str(self.policies),
        }

    def effective_image_deadline_s(self) -> float:
        """The image deadline, capped at half the moderator timeout (the text needs the rest)."""
        return min(self.image_deadline_s, self.moderator_timeout_s / 2)

    def served_name(self) -> str:
        """The one model name this proxy answers to."""
        if self.served_model:
            return self.served_model
        prefix, _, rest = self.upstream.partition(":")
        if prefix == "openai" and "#" in rest:
            return rest.partition("#")[2]
        # Never show clients an internal spec (paths, hosts): only its last path component.
        return redact_url_credentials(self.upstream).rsplit("/", 1)[-1]
