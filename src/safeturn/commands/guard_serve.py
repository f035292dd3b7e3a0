"""`safeturn guard serve`: run the guard proxy in front of an OpenAI-compatible server.

The lead registers `serve_command` on the `guard` group. It refuses to start without a bearer
token (`SAFETURN_GUARD_TOKEN`) unless `--no-auth` is given, and `--no-auth` only binds to a
loopback address, so an unauthenticated proxy is never reachable from the network.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from safeturn.errors import SafeturnError
from safeturn.guard.proxy_settings import TOKEN_ENV, ProxySettings
from safeturn.models.spec import check_model_spec

if TYPE_CHECKING:
    from safeturn.guard.guarded import FailMode, GuardMode

_MODES: dict[str, GuardMode] = {"inject": "inject", "refuse": "refuse", "annotate": "annotate"}
_FAIL: dict[str, FailMode] = {"closed": "closed", "open": "open"}


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses (the only hosts `--no-auth` may bind)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def limit_torch_threads(threads: int) -> None:
    """Cap torch's intra-op threads: the moderator's encoder then uses one core per request.

    Concurrent requests run their moderator calls in parallel threads; with torch's default
    (one thread per core each) they oversubscribe the cores. Measured on a loaded 2-core
    machine, one thread cut the proxy's p95 added latency from about 450 ms to about 31 ms
    (`benchmarks/proxy_overhead.py`).
    """
    import torch

    torch.set_num_threads(threads)


UpstreamOpt = Annotated[
    str, typer.Option(help="upstream model spec, e.g. openai:http://localhost:8001/v1#MODEL")
]
PortOpt = Annotated[int, typer.Option(help="port to listen on")]
HostOpt = Annotated[str, typer.Option(help="address to bind")]
ModeratorOpt = Annotated[str, typer.Option(help="moderator spec")]
ModeOpt = Annotated[
    str, typer.Option(help="on a flagged chat: inject (policy), refuse, or annotate")
]
FailOpt = Annotated[
    str,
    typer.Option(
        help="when the moderator fails or images go unscreened: closed (refuse) or open "
        "(flagged or near-threshold chats still get the flagged action; others pass with "
        "the default safety policy injected and x-safeturn-unscreened set)"
    ),
]
ScreenRepliesOpt = Annotated[
    bool, typer.Option(help="also screen replies with the classifier judge")
]
NoAuthOpt = Annotated[
    bool, typer.Option("--no-auth", help=f"serve without {TOKEN_ENV} (loopback addresses only)")
]
MaxBodyOpt = Annotated[float, typer.Option(help="largest request body, in MiB")]
UpstreamTimeoutOpt = Annotated[float, typer.Option(help="seconds per upstream call")]
UpstreamRetriesOpt = Annotated[int, typer.Option(help="upstream retries on 5xx/429")]
UpstreamKeyEnvOpt = Annotated[
    str, typer.Option(help="environment variable holding the upstream's API key")
]
ModeratorTimeoutOpt = Annotated[float, typer.Option(help="seconds per moderator call")]
MegapixelsOpt = Annotated[
    float, typer.Option(help="largest sum of width x height over a request's images (413)")
]
ImageDeadlineOpt = Annotated[
    float, typer.Option(help="seconds the moderator waits for new images; then: unscreened")
]
ImageWorkersOpt = Annotated[
    int, typer.Option(help="threads analysing images, for all requests together")
]
OcrThreadsOpt = Annotated[
    int,
    typer.Option(
        help="ONNX Runtime threads per OCR / NudeNet call (0: SAFETURN_OCR_THREADS, else all cores)"
    ),
]
DbOpt = Annotated[
    str, typer.Option(help="run database (path or SQLAlchemy URL) for decision records")
]
NoDbOpt = Annotated[bool, typer.Option("--no-db", help="do not record decisions")]
StoreContentOpt = Annotated[
    bool, typer.Option(help="also store message and reply text with each decision")
]
ExposeScoresOpt = Annotated[
    bool, typer.Option(help="send risk scores to clients (helps attackers tune)")
]
ServedModelOpt = Annotated[
    str | None, typer.Option(help="model name clients use [default: the upstream's]")
]
PoliciesOpt = Annotated[
    Path | None, typer.Option(help="JSON or TOML file of {category: policy text}")
]
TorchThreadsOpt = Annotated[
    int, typer.Option(help="torch threads per moderator call (0: torch's default)")
]
LogLevelOpt = Annotated[str, typer.Option(help="debug, info, warning or error")]


@dataclass(frozen=True)
class ServeFlags:
    """The flags of `guard serve`, by parameter name (the command's signature declares them)."""

    upstream: str
    port: int
    host: str
    moderator: str
    mode: str
    fail: str
    screen_replies: bool
    no_auth: bool
    max_body_mb: float
    upstream_timeout: float
    upstream_retries: int
    upstream_key_env: str
    moderator_timeout: float
    max_request_megapixels: float
    image_deadline: float
    image_workers: int
    ocr_threads: int
    db: str
    no_db: bool
    store_content: bool
    expose_scores: bool
    served_model_name: str | None
    policies: Path | None
    torch_threads: int
    log_level: str

    def proxy_settings(self, token: str | None) -> ProxySettings:
        """The proxy's settings; a flag it refuses is a usage error (exit code 2), as a bad flag.

        Raises:
            typer.BadParameter: A mode, a `--no-auth` off loopback, a bad upstream spec, a
                missing or short token, or a limit out of range.
        """
        if self.mode not in _MODES or self.fail not in _FAIL:
            raise typer.BadParameter("--mode must be inject|refuse|annotate, --fail closed|open")
        if self.no_auth and not is_loopback(self.host):
            raise typer.BadParameter(
                f"--no-auth is only allowed on a loopback address, not {self.host}"
            )
        try:
            check_model_spec(self.upstream)  # e.g. a key in the URL is refused here, not later
            return ProxySettings(
                upstream=self.upstream,
                moderator=self.moderator,
                mode=_MODES[self.mode],
                on_error=_FAIL[self.fail],
                screen_replies=self.screen_replies,
                token=token,
                no_auth=self.no_auth,
                max_body_bytes=int(self.max_body_mb * 1024 * 1024),
                upstream_timeout_s=self.upstream_timeout,
                upstream_retries=self.upstream_retries,
                upstream_key_env=self.upstream_key_env,
                moderator_timeout_s=self.moderator_timeout,
                max_request_pixels=int(self.max_request_megapixels * 1_000_000),
                image_deadline_s=self.image_deadline,
                image_workers=self.image_workers,
                ocr_threads=self.ocr_threads if self.ocr_threads > 0 else None,
                database=None if self.no_db else self.db,
                store_content=self.store_content,
                expose_scores=self.expose_scores,
                served_model=self.served_model_name,
                policies=self.policies,
            )
        except SafeturnError as exc:
            raise typer.BadParameter(str(exc)) from exc


def serve_command(
    ctx: typer.Context,
    upstream: UpstreamOpt,
    port: PortOpt = 8000,
    host: HostOpt = "127.0.0.1",
    moderator: ModeratorOpt = "embedded",
    mode: ModeOpt = "inject",
    fail: FailOpt = "closed",
    screen_replies: ScreenRepliesOpt = False,
    no_auth: NoAuthOpt = False,
    max_body_mb: MaxBodyOpt = 32.0,
    upstream_timeout: UpstreamTimeoutOpt = 120.0,
    upstream_retries: UpstreamRetriesOpt = 1,
    upstream_key_env: UpstreamKeyEnvOpt = "OPENAI_API_KEY",
    moderator_timeout: ModeratorTimeoutOpt = 10.0,
    max_request_megapixels: MegapixelsOpt = 48.0,
    image_deadline: ImageDeadlineOpt = 3.0,
    image_workers: ImageWorkersOpt = 2,
    ocr_threads: OcrThreadsOpt = 1,
    db: DbOpt = "runs/guard/safeturn.db",
    no_db: NoDbOpt = False,
    store_content: StoreContentOpt = False,
    expose_scores: ExposeScoresOpt = False,
    served_model_name: ServedModelOpt = None,
    policies: PoliciesOpt = None,
    torch_threads: TorchThreadsOpt = 1,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve an OpenAI-compatible API that screens every chat before the upstream sees it.

    --fail closed (the default) refuses when the moderator fails or when
    images could not be screened within --image-deadline.

    --fail open never forwards a flagged chat unchanged. Images not screened:
    the text-only reading decides; flagged or in the uncertain band gets the
    flagged action, anything else the default safety policy. Moderator
    failure: the default safety policy is injected. These responses carry
    the x-safeturn-unscreened header and safeturn.error.
    """
    serve(ServeFlags(**ctx.params))


def serve(flags: ServeFlags) -> None:
    """Build the proxy from `flags` and the token in the environment; serve until stopped."""
    import uvicorn

    from safeturn.guard.jsonlog import configure_json_logging
    from safeturn.guard.server import create_app

    token = None if flags.no_auth else (os.environ.get(TOKEN_ENV) or None)
    settings = flags.proxy_settings(token)
    if flags.torch_threads > 0:
        limit_torch_threads(flags.torch_threads)
    level = logging.getLevelNamesMapping().get(flags.log_level.upper(), logging.INFO)
    configure_json_logging(level)
    uvicorn.run(
        create_app(settings),
        host=flags.host,
        port=flags.port,
        access_log=False,  # the app logs every request itself, as JSON, without client data
        log_config=None,
        server_header=False,
    )
