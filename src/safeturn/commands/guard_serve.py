"""`safeturn guard serve`: run the guard proxy in front of an OpenAI-compatible server.

The lead registers `serve_command` on the `guard` group. It refuses to start without a bearer
token (`SAFETURN_GUARD_TOKEN`) unless `--no-auth` is given, and `--no-auth` only binds to a
loopback address, so an unauthenticated proxy is never reachable from the network.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from safeturn.errors import SafeturnError
from safeturn.guard.proxy_settings import TOKEN_ENV, ProxySettings
from safeturn.models.spec import check_model_spec

if TYPE_CHECKING:
    from safeturn.guard.guarded import FailMode, GuardMode

err_console = Console(stderr=True)

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


def serve_command(
    upstream: Annotated[
        str,
        typer.Option(help="upstream model spec, e.g. openai:http://localhost:8001/v1#MODEL"),
    ],
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    moderator: Annotated[str, typer.Option(help="moderator spec")] = "embedded",
    mode: Annotated[
        str, typer.Option(help="on a flagged chat: inject (policy), refuse, or annotate")
    ] = "inject",
    fail: Annotated[
        str,
        typer.Option(
            help="when the moderator fails or images go unscreened: closed (refuse) or open "
            "(flagged or near-threshold chats still get the flagged action; others pass with "
            "the default safety policy injected and x-safeturn-unscreened set)"
        ),
    ] = "closed",
    screen_replies: Annotated[
        bool, typer.Option(help="also screen replies with the classifier judge")
    ] = False,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help=f"serve without {TOKEN_ENV} (loopback addresses only)"),
    ] = False,
    max_body_mb: Annotated[float, typer.Option(help="largest request body, in MiB")] = 32.0,
    upstream_timeout: Annotated[float, typer.Option(help="seconds per upstream call")] = 120.0,
    upstream_retries: Annotated[int, typer.Option(help="upstream retries on 5xx/429")] = 1,
    upstream_key_env: Annotated[
        str, typer.Option(help="environment variable holding the upstream's API key")
    ] = "OPENAI_API_KEY",
    moderator_timeout: Annotated[float, typer.Option(help="seconds per moderator call")] = 10.0,
    max_request_megapixels: Annotated[
        float, typer.Option(help="largest sum of width x height over a request's images (413)")
    ] = 48.0,
    image_deadline: Annotated[
        float,
        typer.Option(help="seconds the moderator waits for new images; then: unscreened"),
    ] = 3.0,
    image_workers: Annotated[
        int, typer.Option(help="threads analysing images, for all requests together")
    ] = 2,
    ocr_threads: Annotated[
        int,
        typer.Option(
            help="ONNX Runtime threads per OCR / NudeNet call "
            "(0: SAFETURN_OCR_THREADS, else all cores)"
        ),
    ] = 1,
    db: Annotated[
        str, typer.Option(help="run database (path or SQLAlchemy URL) for decision records")
    ] = "runs/guard/safeturn.db",
    no_db: Annotated[bool, typer.Option("--no-db", help="do not record decisions")] = False,
    store_content: Annotated[
        bool, typer.Option(help="also store message and reply text with each decision")
    ] = False,
    expose_scores: Annotated[
        bool, typer.Option(help="send risk scores to clients (helps attackers tune)")
    ] = False,
    served_model_name: Annotated[
        str | None, typer.Option(help="model name clients use [default: the upstream's]")
    ] = None,
    policies: Annotated[
        Path | None, typer.Option(help="JSON or TOML file of {category: policy text}")
    ] = None,
    torch_threads: Annotated[
        int, typer.Option(help="torch threads per moderator call (0: torch's default)")
    ] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
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
    import uvicorn

    from safeturn.guard.jsonlog import configure_json_logging
    from safeturn.guard.server import create_app

    if mode not in _MODES or fail not in _FAIL:
        raise typer.BadParameter("--mode must be inject|refuse|annotate, --fail closed|open")
    if no_auth and not is_loopback(host):
        raise typer.BadParameter(f"--no-auth is only allowed on a loopback address, not {host}")
    token = None if no_auth else (os.environ.get(TOKEN_ENV) or None)
    try:
        check_model_spec(upstream)  # e.g. a key in the URL is refused here, not at first call
        settings = ProxySettings(
            upstream=upstream,
            moderator=moderator,
            mode=_MODES[mode],
            on_error=_FAIL[fail],
            screen_replies=screen_replies,
            token=token,
            no_auth=no_auth,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            upstream_timeout_s=upstream_timeout,
            upstream_retries=upstream_retries,
            upstream_key_env=upstream_key_env,
            moderator_timeout_s=moderator_timeout,
            max_request_pixels=int(max_request_megapixels * 1_000_000),
            image_deadline_s=image_deadline,
            image_workers=image_workers,
            ocr_threads=ocr_threads if ocr_threads > 0 else None,
            database=None if no_db else db,
            store_content=store_content,
            expose_scores=expose_scores,
            served_model=served_model_name,
            policies=policies,
        )
    except SafeturnError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=2) from exc
    if torch_threads > 0:
        limit_torch_threads(torch_threads)
    level = logging.getLevelNamesMapping().get(log_level.upper(), logging.INFO)
    configure_json_logging(level)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        access_log=False,  # the app logs every request itself, as JSON, without client data
        log_config=None,
        server_header=False,
    )
