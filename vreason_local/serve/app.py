"""The ASGI app: OpenAI's chat-completions API in front of one engine (`create_app(engine, settings, options)`).

Routes: `POST /v1/chat/completions` (streamed or not), `GET /v1/models`, `GET /health` (no key), `GET /metrics`.
A request is read and checked here (body cap, JSON, `requests.parse_chat_request`), then queued for the
engine's thread (`worker.Worker`); its coroutine only relays the job's events. A task per request waits for
the client to go away and cancels the job then, whatever stage it is at, so the next request starts within
a second (server-notes.md: users' complaint 1). Every error, before a stream or inside one, has OpenAI's
shape (`errors.ApiError`); nothing shows a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.sse import EventSourceResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..engine import Engine
from ..settings import RunSettings
from . import stream
from .answering import Answerer, Outcome
from .config import ServeOptions
from .errors import ApiError
from .metrics import Metrics
from .requests import model_ids, parse_chat_request
from .worker import Job, QueueFull, Worker

log = logging.getLogger("vreason.serve")

OPEN_PATHS = ("/health",)  # no key needed: a load balancer's or a launcher's readiness probe


def create_app(engine: Engine, settings: RunSettings, options: ServeOptions) -> FastAPI:
    """The app for `engine`, with `settings` as every request's defaults. The engine's thread starts with the
    app (ASGI lifespan) and stops with it; the engine itself stays the caller's to close."""
    metrics = Metrics()
    answerer = Answerer(engine, options.cache_bytes, metrics, options.model_name)
    worker = Worker(answerer.serve, options.queue, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(title="vreason", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": options.model_name, "queue_depth": worker.depth}

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "vreason"}
                for m in model_ids(options.model_name)
            ],
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _read_json(request, options.max_body_bytes)
        req = parse_chat_request(body, settings, options.model_name, options.media)
        request.scope["vreason.log"] = f"model={req.model_id} mode={req.mode} stream={str(req.stream).lower()}"
        job = Job(req, asyncio.get_running_loop())
        try:
            worker.submit(job)
        except ApiError:
            req.discard()
            raise
        watcher = asyncio.create_task(_watch(request, job, options.time_limit_s, metrics))
        if req.stream:
            return await _streamed(request, job, watcher, options.keepalive_s)
        try:
            return await _whole(request, job)
        finally:
            watcher.cancel()

    app.add_middleware(Guard, api_key=options.api_key, max_body_bytes=options.max_body_bytes, metrics=metrics)
    if options.cors_origins:  # outside the guard: a browser's preflight carries no key, and a 401 needs CORS too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


# -- one request's life -----------------------------------------------------------------------------------
async def _read_json(request: Request, cap: int) -> object:
    """The body, refused past `cap` bytes while it arrives (uvicorn has no cap of its own), then parsed."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


async def _watch(request: Request, job: Job, time_limit_s: float, metrics: Metrics) -> None:
    """Cancel `job` when its client disconnects or its time is up, whichever comes first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    remaining = time_limit_s - (time.perf_counter() - job.arrived)
    try:
        await asyncio.wait_for(disconnected(), max(0.0, remaining))
        reason = "disconnected"
    except asyncio.TimeoutError:
        reason = "time_limit"
    if not job.finished and job.cancel_reason is None:
        metrics.add("vreason_cancelled_total", reason=reason)
        job.cancel(reason)


async def _whole(request: Request, job: Job) -> Response:
    """The non-streamed answer: wait for the job's end, then one JSON response."""
    while True:
        kind, payload = await job.outbox.get()
        if kind == "error":
            raise payload  # type: ignore[misc]
        if kind == "done":
            out: Outcome = payload  # type: ignore[assignment]
            req = job.request
            body = stream.completion(
                job.id, job.created, req.model_id, out.answer, out.cached_tokens, req.telemetry, req.stop, out.logprobs
            )
            _note(request, out, time.perf_counter() - job.arrived, None)
            return JSONResponse(body)


async def _streamed(request: Request, job: Job, watcher: asyncio.Task, keepalive_s: float) -> Response:
    """The streamed answer. Its status is decided before the first byte: an error found before the engine
    starts on the request (unreadable media, a context too small for it, a full queue) is a plain error
    response; one after that is a last error chunk."""
    kind, payload = await job.outbox.get()  # "started", or "error" (refused, or cancelled while it waited)
    if kind == "error":
        watcher.cancel()
        raise payload  # type: ignore[misc]
    req = job.request
    chunks = stream.Chunks(job.id, job.created, req.model_id, req.include_usage, req.stop)

    ttft: list[float] = []  # seconds to the first text, once there is one

    def render(kind: str, payload: object) -> tuple[list[bytes], bool]:
        """One message from the engine's thread as SSE lines; and whether it ended the stream."""
        if kind == "progress":
            out = [stream.comment(f"{payload.stage} {payload.done}/{payload.total}")]
            if req.telemetry:
                out.append(chunks.chunk({}, extra={"vreason": stream.progress_telemetry(payload)}))
            return out, False
        if kind == "token":
            event, entry = payload
            deltas = chunks.deltas(event)
            if deltas and not ttft:
                ttft.append(time.perf_counter() - job.arrived)
            extra = {"vreason": stream.token_telemetry(event)} if req.telemetry else None
            if not deltas and (extra or entry):
                deltas = [{}]
            # the token's logprobs ride on its first chunk, so the chunks' entries are the non-streamed list
            return [
                chunks.chunk(delta, extra=extra, logprobs=entry if i == 0 else None) for i, delta in enumerate(deltas)
            ], False
        if kind == "notice":
            notice = {"vreason": {"notice": payload.message, "level": payload.level}}
            return ([chunks.chunk({}, extra=notice)] if req.telemetry else []), False
        if kind == "error":
            request.scope["vreason.status"] = payload.status  # the HTTP status was 200 already
            _note_error(request, payload)
            return [stream.error_event(payload), stream.DONE], True
        out: Outcome = payload  # "done"
        lines = [chunks.chunk(delta) for delta in chunks.rest()]
        finish = stream.finish_reason(out.answer, out.stopped or chunks.stop.hit)
        extra = {"vreason": stream.answer_telemetry(out.answer)} if req.telemetry else None
        lines.append(chunks.chunk({}, finish, extra))
        if req.include_usage:
            lines.append(chunks.usage_chunk(out.answer, out.cached_tokens))
        _note(request, out, time.perf_counter() - job.arrived, ttft[0] if ttft else None)
        return [*lines, stream.DONE], True

    async def events() -> AsyncIterator[bytes]:
        """Every message there is, written at once: a client (or a machine) slower than the engine gets the
        tokens in fewer writes instead of falling behind by one wake-up per token."""
        ended = False
        try:
            yield chunks.role()
            while not ended:
                try:
                    message = await asyncio.wait_for(job.outbox.get(), keepalive_s)
                except asyncio.TimeoutError:
                    yield stream.comment("keep-alive")
                    continue
                lines, ended = render(*message)
                while not ended and not job.outbox.empty():
                    more, ended = render(*job.outbox.get_nowait())
                    lines += more
                if lines:
                    yield b"".join(lines)
        finally:  # the stream ended, or the client went away (the generator is closed part way)
            if not ended:
                job.cancel("disconnected")
            watcher.cancel()

    return EventSourceResponse(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _note(request: Request, out: Outcome, total_s: float, ttft_s: float | None) -> None:
    """Add the answer's figures to the request's one log line (no text, no media, no key)."""
    a = out.answer
    ttft = f" ttft={ttft_s:.3f}s" if ttft_s is not None else ""
    request.scope["vreason.log"] = (
        request.scope.get("vreason.log", "")
        + f" prompt={len(a.prompt_tokens)} cached={out.cached_tokens} completion={len(a.tokens)}"
        + f" stop={a.stop_reason}{ttft} total={total_s:.3f}s"
    )


def _note_error(request: Request, exc: ApiError) -> None:
    request.scope["vreason.log"] = request.scope.get("vreason.log", "") + f" error={exc.status}:{exc.code or exc.type}"


# -- errors in OpenAI's shape ------------------------------------------------------------------------------
def _error_response(exc: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _too_large(cap: int) -> ApiError:
    return ApiError(
        413, f"the request body is larger than the server's cap of {cap:,} bytes (--max-body-mb)", code="body_too_large"
    )


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        _note_error(request, exc)
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind)
        _note_error(request, err)
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(ApiError(400, str(exc)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return _error_response(err)


# -- before any route: the key, the body's declared size, the log line -------------------------------------
class Guard:
    """Pure ASGI (a `BaseHTTPMiddleware` would wrap `receive` and hide the client's disconnect from the
    routes): checks the API key in constant time on every path but /health, refuses a body whose declared
    length is over the cap before reading it, and logs (and counts) each request once it is answered."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _error_response(refusal)(scope, receive, sending)
                scope["vreason.log"] = f"error={refusal.status}:{refusal.code or refusal.type}"
            else:
                await self.app(scope, receive, sending)
        finally:
            if scope["path"] == "/v1/chat/completions":  # an error inside a stream counts as that error
                self.metrics.add("vreason_requests_total", status=str(scope.get("vreason.status", status)))
            extra = scope.get("vreason.log", "")
            log.info(
                "%s %s %s %.3fs%s",
                scope["method"],
                scope["path"],
                status,
                time.perf_counter() - t0,
                f" {extra}" if extra else "",
            )

    def _refusal(self, scope: Scope) -> ApiError | None:
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if not given:
                return ApiError(
                    401, "an API key is needed: send it as 'Authorization: Bearer KEY'", code="missing_api_key"
                )
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return ApiError(401, "the API key is not this server's", code="invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return ApiError(400, "the Content-Length header is not a number")
            if declared > self.max_body_bytes:
                return _too_large(self.max_body_bytes)
        return None
