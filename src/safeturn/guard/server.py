"""`safeturn guard serve`: an OpenAI-compatible proxy that screens every chat before the model.

`POST /v1/chat/completions` (text and data-URL images, `stream: true` included) goes through
`GuardedModel` to the upstream ChatModel; `GET /v1/models`, `GET /healthz` and `GET /metrics`
(Prometheus) complete the API. Security: a bearer token (constant-time compare) on everything
but `/healthz`; a body-size limit (413) checked before parsing; the schema's image limits;
upstream timeouts; no remote image fetching. The client's token is never sent upstream; the
upstream key is read from the environment by the upstream client alone.

Images cost the moderator real CPU, so they are bounded twice: a per-request pixel budget
(`max_request_pixels`, summed from the headers before anything is decoded; 413 names the image
that goes over it) and an image deadline in the moderator, after which unread images count as
unscreened.

Failures: with `on_error="closed"` a failing moderator or reply screen, or unscreened images,
yield a refusal completion (HTTP 200, `finish_reason: "content_filter"`, `safeturn.error` set);
`open` follows `GuardedModel`'s rules: never a flagged or near-threshold request unchanged, the
default safety policy injected otherwise. A response that was not fully screened carries
`x-safeturn-unscreened: images` (or `dialogue` when the moderator failed). An upstream failure
has no reply to pass on in either mode and is an OpenAI-shaped error: 502, or 504 on timeout;
the log names only the exception type and HTTP status, since an upstream's error body may echo
the user's messages. Every screened request is a row in `guard_decisions` and a JSON log line,
neither holding message content unless asked for.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from safeturn.guard.base import Moderator
from safeturn.guard.decisions import Decision, DecisionLog
from safeturn.guard.guarded import GuardedModel, UpstreamError
from safeturn.guard.policies import PolicyLibrary
from safeturn.guard.proxy_metrics import ProxyMetrics
from safeturn.guard.proxy_settings import ProxySettings
from safeturn.guard.wire import (
    ChatRequest,
    WireError,
    check_images,
    completion_body,
    error_body,
    parse_dialogue,
    parse_request,
    stream_events,
)
from safeturn.models.base import ChatModel
from safeturn.schema import Dialogue, GuardInfo, ImagePart, Reply

logger = logging.getLogger(__name__)

_ROUTES = frozenset({"/v1/chat/completions", "/v1/models", "/healthz", "/metrics"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class _Proxy:
    """The live parts of a serving proxy, built at startup."""

    settings: ProxySettings
    guarded: GuardedModel
    metrics: ProxyMetrics
    decisions: DecisionLog | None = None
    run_id: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))

    async def aclose(self) -> None:
        if self.decisions is not None:
            await self.decisions.aclose()
            if self.run_id is not None and self.settings.database is not None:
                from safeturn.run.store import RunStore

                store = RunStore(self.settings.database)
                try:
                    store.finish_run(self.run_id, "done")
                finally:
                    store.close()
        await self.guarded.aclose()


def create_app(
    settings: ProxySettings,
    *,
    model: ChatModel | None = None,
    moderator: Moderator | None = None,
) -> FastAPI:
    """The proxy app; `model` and `moderator` default to what the settings' specs name."""
    metrics = ProxyMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        proxy = await asyncio.to_thread(_open_proxy, settings, metrics, model, moderator)
        app.state.proxy = proxy
        try:
            yield
        finally:
            await proxy.aclose()

    app = FastAPI(
        title="safeturn guard",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(_AccessLog, metrics=metrics)
    _add_error_handlers(app)
    _add_routes(app, settings, metrics)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Wire errors become their OpenAI-shaped body; anything else a 500 naming only its type."""

    @app.exception_handler(WireError)
    async def _wire_error(_request: Request, exc: WireError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error (%s)", type(exc).__name__)
        body = error_body("internal error in the guard proxy", kind="server_error", code="internal")
        return JSONResponse(body, status_code=500)


def _add_routes(app: FastAPI, settings: ProxySettings, metrics: ProxyMetrics) -> None:
    """The API; every route but `/healthz` requires the bearer token."""

    def require_token(request: Request) -> None:
        _check_token(request, settings.token)

    auth = [Depends(require_token)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", dependencies=auth)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=auth)
    async def list_models(request: Request) -> dict[str, Any]:
        proxy: _Proxy = request.app.state.proxy
        entry = {
            "id": settings.served_name(),
            "object": "model",
            "created": proxy.started,
            "owned_by": "safeturn-guard",
        }
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request) -> Response:
        return await _chat(request.app.state.proxy, request)


async def _chat(proxy: _Proxy, request: Request) -> Response:
    start = time.perf_counter()
    settings = proxy.settings
    chat = parse_request(await _read_body(request, settings.max_body_bytes))
    served = settings.served_name()
    if chat.model != served:
        message = f"model {chat.model!r} is not served here; this proxy serves {served!r}"
        raise WireError(404, message, code="model_not_found")
    dialogue = parse_dialogue(chat)
    if dialogue.images:
        await asyncio.to_thread(
            check_images,
            dialogue,
            settings.image_limits,
            max_request_pixels=settings.max_request_pixels,
        )
    decision_id = uuid.uuid4().hex
    try:
        reply = await proxy.guarded.generate(dialogue, chat.params(settings.default_max_tokens))
    except UpstreamError as exc:
        raise _upstream_failed(proxy, exc, decision_id, dialogue, chat.stream, start) from None
    info = reply.guard
    assert info is not None  # GuardedModel sets it on every reply
    _record(proxy, decision_id, info, reply, dialogue, chat.stream, 200, "ok", start)
    return _response(settings, chat, reply, info, decision_id)


def _upstream_failed(
    proxy: _Proxy,
    exc: UpstreamError,
    decision_id: str,
    dialogue: Dialogue,
    stream: bool,
    start: float,
) -> WireError:
    """Log and record an upstream failure; the error (502, or 504 on timeout) to raise."""
    status, outcome = (504, "upstream_timeout") if exc.timed_out else (502, "upstream_error")
    # The client gets a generic error; the operator gets the exception type and the HTTP
    # status (a wrong key, a down server), never the message: an upstream's error body can
    # echo the user's messages back.
    cause = exc.__cause__ or exc
    status_code = getattr(cause, "status", None)
    logger.warning(
        "upstream failed (%s%s)",
        type(cause).__name__,
        f", HTTP {status_code}" if isinstance(status_code, int) else "",
        extra={
            "fields": {
                "event": "upstream_error",
                "decision_id": decision_id,
                "error_type": type(cause).__name__,
                "upstream_status": status_code if isinstance(status_code, int) else None,
            }
        },
    )
    _record(proxy, decision_id, exc.guard, None, dialogue, stream, status, outcome, start)
    message = "the upstream model timed out" if exc.timed_out else "the upstream model failed"
    return WireError(status, message, kind="upstream_error", code=outcome)


def _response(
    settings: ProxySettings, chat: ChatRequest, reply: Reply, info: GuardInfo, decision_id: str
) -> Response:
    """The completion (JSON or an event stream) with the guard's view and decision headers."""
    served = settings.served_name()
    extra = _client_view(info, decision_id, expose_scores=settings.expose_scores)
    completion_id = f"chatcmpl-{decision_id}"
    headers = {"x-safeturn-decision": decision_id}
    unscreened = _unscreened(info)
    if unscreened is not None:
        headers["x-safeturn-unscreened"] = unscreened
    if chat.stream:
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        events = stream_events(
            reply,
            completion_id=completion_id,
            model=served,
            extra=extra,
            include_usage=include_usage,
        )
        return StreamingResponse(_aiter(events), media_type="text/event-stream", headers=headers)
    body = completion_body(reply, completion_id=completion_id, model=served, extra=extra)
    return JSONResponse(body, headers=headers)


def _unscreened(info: GuardInfo) -> str | None:
    """What went unscreened: `dialogue` (the moderator failed), `images`, or None."""
    if info.risk is None and info.error is not None and info.error.startswith("moderator"):
        return "dialogue"
    return None if info.images_screened else "images"


async def _aiter(events: Iterator[str]) -> AsyncIterator[str]:
    """Feed a ready-made event list from the loop (a sync iterator costs a thread hop each)."""
    for event in events:
        yield event


def _check_token(request: Request, token: str | None) -> None:
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise WireError(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            kind="authentication_error",
            code="missing_token",
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise WireError(401, "invalid bearer token", kind="authentication_error", code="bad_token")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) passes `limit`."""
    too_large = WireError(
        413, f"request body exceeds the limit of {limit} bytes", code="body_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _record(
    proxy: _Proxy,
    decision_id: str,
    info: GuardInfo,
    reply: Reply | None,
    dialogue: Dialogue,
    stream: bool,
    status: int,
    outcome: str,
    start: float,
) -> None:
    """Count, log and store one decision: labels and numbers only, content only if asked."""
    metrics, settings = proxy.metrics, proxy.settings
    total_s = time.perf_counter() - start
    action = info.action if reply is not None else None
    metrics.decisions.labels(action or "none", info.category or "none").inc()
    metrics.moderator_seconds.observe(info.moderator_s)
    if info.model_s is not None:
        metrics.upstream_seconds.observe(info.model_s)
    metrics.request_seconds.observe(total_s)
    if info.error is not None:
        metrics.failures.labels(info.error.partition(":")[0]).inc()
    if outcome != "ok":
        metrics.failures.labels("upstream_timeout" if status == 504 else "upstream").inc()
    decision = Decision(
        decision_id=decision_id,
        run_id=proxy.run_id,
        model=settings.served_name(),
        moderator=info.moderator,
        mode=settings.mode,
        action=action,
        outcome=outcome,
        status=status,
        flagged=info.flagged,
        risk=info.risk,
        threshold=info.threshold,
        category=info.category,
        strategy=info.strategy,
        earliest_turn=info.earliest_turn,
        stage=info.stage,
        reply_score=info.reply_score,
        error=info.error,
        turns=dialogue.n_turns,
        images=len(dialogue.images),
        stream=stream,
        moderator_ms=info.moderator_s * 1000,
        upstream_ms=None if info.model_s is None else info.model_s * 1000,
        total_ms=total_s * 1000,
        content=_content(dialogue, reply) if settings.store_content else None,
    )
    fields = {k: v for k, v in vars(decision).items() if k not in ("content", "created_at")}
    fields["unscreened_images"] = info.unscreened_images  # the row has it in `error`
    logger.info("guard decision", extra={"fields": {"event": "decision", **fields}})
    if proxy.decisions is not None and not proxy.decisions.submit(decision):
        metrics.failures.labels("store").inc()


def _content(dialogue: Dialogue, reply: Reply | None) -> dict[str, Any]:
    messages = [
        {
            "role": m.role,
            "parts": [
                {"image_sha256": p.sha256()} if isinstance(p, ImagePart) else {"text": p.text}
                for p in m.parts
            ],
        }
        for m in dialogue.messages
    ]
    return {"messages": messages, "reply": None if reply is None else reply.text}


def _client_view(info: GuardInfo, decision_id: str, *, expose_scores: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "decision_id": decision_id,
        "action": info.action,
        "flagged": info.flagged,
        "category": info.category,
        "error": info.error,
        "images_screened": info.images_screened,
    }
    if expose_scores:
        view |= {
            "risk": info.risk,
            "threshold": info.threshold,
            "strategy": info.strategy,
            "earliest_turn": info.earliest_turn,
            "turn_risks": info.turn_risks,
            "reply_score": info.reply_score,
        }
    return view


def _open_proxy(
    settings: ProxySettings,
    metrics: ProxyMetrics,
    model: ChatModel | None,
    moderator: Moderator | None,
) -> _Proxy:
    """Build the upstream, moderator, guard and decision log (blocking: runs in a thread)."""
    from safeturn.models.spec import load_model

    if model is None:
        options: dict[str, Any] = {}
        if settings.upstream.startswith("openai:"):
            options = {
                # A little over the guard's own limit, so the guard's deadline always fires
                # first and a slow upstream is reported as a timeout (504), not a failure.
                "timeout_s": settings.upstream_timeout_s + 1.0,
                "max_retries": settings.upstream_retries,
                "api_key_env": settings.upstream_key_env,
            }
        model = load_model(settings.upstream, **options)
    if moderator is None:
        from safeturn.guard.spec import load_moderator

        moderator = load_moderator(
            settings.moderator,
            image_deadline_s=settings.effective_image_deadline_s(),
            image_workers=settings.image_workers,
            ocr_threads=settings.ocr_threads,
        )
        warm_up = getattr(moderator, "warm_up", None)
        if warm_up is not None:
            warm_up()  # engines load now, not inside the first request's image deadline
    policies = None if settings.policies is None else PolicyLibrary.from_file(settings.policies)
    guarded = GuardedModel(
        model,
        moderator,
        mode=settings.mode,
        screen_replies=settings.screen_replies,
        policies=policies,
        on_error=settings.on_error,
        moderator_timeout_s=settings.moderator_timeout_s,
        model_timeout_s=settings.upstream_timeout_s,
    )
    proxy = _Proxy(settings=settings, guarded=guarded, metrics=metrics)
    if settings.database is not None:
        from safeturn.run.store import RunStore

        store = RunStore(settings.database)
        try:
            proxy.run_id = store.create_run(settings.description(), kind="guard")
        finally:
            store.close()
        proxy.decisions = DecisionLog(settings.database)
    return proxy


class _AccessLog:
    """Pure ASGI middleware: counts every request by route and status and logs it as JSON."""

    def __init__(self, app: ASGIApp, metrics: ProxyMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope["path"] if scope["path"] in _ROUTES else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            fields = {
                "event": "request",
                "method": scope["method"],
                "route": route,
                "status": status,
                "ms": round((time.perf_counter() - start) * 1000, 3),
            }
            logger.info("request", extra={"fields": fields})
