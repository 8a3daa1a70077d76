"""The FastAPI app (``build_app``) and how it runs under uvicorn (``run_server``).

The engine loads in a worker thread after the socket is open, so the server answers 503 while it
starts; ``AsyncLLMEngine`` then runs model steps in its own thread, so HTTP work and engine steps
never wait for each other beyond the GIL. A pure-ASGI gate in front of the app enforces the API
key, readiness (503) and the body size limit before FastAPI parses anything. On Ctrl-C every open
stream ends with an error event and its request is aborted (its KV blocks freed) before uvicorn
waits for connections to close.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import AsyncGenerator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from phase3_scheduling import AsyncLLMEngine, EngineArgs
from phase3_scheduling.core_client import AsyncMPClient
from phase3_scheduling.engine_start import EngineStart
from phase3_scheduling.gc_heap import freeze_heap

from .errors import APIError, error_body, install_error_handlers, internal_error
from .metrics import ServerMetrics
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .serving_chat import chat_prompt_ids
from .serving_completions import create_completion
from .serving_chat import create_chat_completion
from .serving_engine import AdmissionLimits, ServerState

logger = logging.getLogger(__name__)
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")
ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass
class ServerConfig:
    engine_args: EngineArgs
    served_model_name: str | None = None
    api_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 4 * 2**20
    log_level: str = "warning"
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    engine_process: bool = True  # False: the engine runs in a thread of the API process
    engine_start: EngineStart | None = None  # an engine start-up begun before the server ran
    event_loop: str = "auto"  # uvicorn's loop: "auto" (uvloop when installed), "uvloop", "asyncio"
    http: str = "auto"  # uvicorn's HTTP/1.1 code: "auto" (httptools when installed), "httptools", "h11"
    # gc.freeze() once the engine is ready (``lightvllm serve``; a test serving in a thread leaves
    # its process's heap alone); LIGHTVLLM_GC_FREEZE=0 turns it off in both processes
    gc_freeze: bool = False

    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        args = self.engine_args
        if args.model:
            return str(args.model).rstrip("/").rsplit("/", 1)[-1]
        if args.load_format == "dummy" and args.extra.get("hf_config_name"):
            return str(args.extra["hf_config_name"])
        from shared.model_registry import DEFAULT_MODEL

        return DEFAULT_MODEL


def version() -> str:
    for dist in ("lightvllm", "phase5-server"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "0.0.0"


class SSEResponse(StreamingResponse):
    """Server-sent events whose generator is always closed: a dropped client aborts its request."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncGenerator[bytes, None]):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = content  # = body_iterator, typed as the generator it is

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.events.aclose()


class Gate:
    """API key, readiness and body size, checked before routing (pure ASGI: no stream buffering)."""

    fastapi_app: FastAPI  # the routed app (``app``), set by build_app

    def __init__(self, app, state: ServerState, api_key: str | None, max_body_bytes: int):
        self.app, self.state, self.max_body = app, state, max_body_bytes
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith(PROTECTED_PREFIXES):
            if self.expected is not None:
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, self.expected):
                    return await _reply(send, 401, "invalid or missing API key", "invalid_api_key",
                                        {"www-authenticate": "Bearer"})
            if not self.state.ready:
                return await _reply(send, 503, _not_ready(self.state), "server_unavailable")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                return await _reply(send, 413, f"request body of {int(length)} bytes exceeds the "
                                    f"limit of {self.max_body}", "body_too_large")
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body:
                    return await _reply(send, 413, f"request body exceeds the limit of "
                                        f"{self.max_body} bytes", "body_too_large")
                if not message.get("more_body"):
                    break
            surrogate = _lone_surrogate(bytes(body))
            if surrogate is not None:
                return await _reply(send, 400, surrogate, "invalid_unicode")
            if b"content-type" not in dict(scope["headers"]):  # curl -d sends none: JSON is meant
                json_type = (b"content-type", b"application/json")
                scope = dict(scope, headers=[*scope["headers"], json_type])
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            return await _shielded(self.app, scope, replay, send)
        return await _shielded(self.app, scope, receive, send)


async def _shielded(app, scope, receive, send) -> None:
    """Run the app; an exception escaping it (already answered with a 500 by the error handler,
    or raised mid-stream) is logged once here and goes no further, so uvicorn neither prints a
    second traceback nor resets the kept-alive connection."""
    started = False

    async def tracking_send(message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except Exception as error:
        if not getattr(error, "lightvllm_logged", False):
            reference = internal_error(error, scope.get("path", "?"))
            if not started:
                return await _reply(send, 500, reference.message, "internal_error")


def _lone_surrogate(body: bytes) -> str | None:
    """A message naming the first lone UTF-16 surrogate escaped in a JSON body, else None.
    (json decodes ``"\\ud800"`` into a str that no UTF-8 encoder or tokenizer accepts.)"""
    if not ESCAPED_SURROGATE.search(body):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None  # malformed JSON: FastAPI answers it
    for path, text in _strings(data, ""):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            where = path.lstrip(".") or "the body"
            return (f"{where} contains a lone UTF-16 surrogate (\\u{ord(text[error.start]):04x} "
                    f"at character {error.start}): send valid Unicode text")
    return None


def _strings(value, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, f"{path}.{key!s}")
            yield from _strings(item, f"{path}.{key!s}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}.{i}")


def _not_ready(state: ServerState) -> str:
    if state.load_error is not None:
        return f"the model failed to load: {state.load_error}"
    if state.draining:
        return "the server is shutting down"
    if state.engine is not None and state.engine.errored is not None:
        return f"the engine stopped after an error: {state.engine.errored}"
    return "the server is starting (the model is loading)"


async def _reply(send, status: int, message: str, code: str, headers: dict | None = None) -> None:
    body = json.dumps(error_body(message, status, None, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def start_engine(config: ServerConfig) -> AsyncLLMEngine | AsyncMPClient:
    """The engine core in its own process (default), or in a thread of this one."""
    if config.engine_process:
        return AsyncMPClient(config.engine_args, log_level=config.log_level,
                             start=config.engine_start)
    return AsyncLLMEngine.from_engine_args(config.engine_args)


def build_app(config: ServerConfig, engine: AsyncLLMEngine | None = None) -> Gate:
    """The app; with ``engine`` it serves that engine (never shutting it down), else loads one."""
    state = ServerState(model_name=config.model_name(), metrics=None,  # type: ignore[arg-type]
                        admission=config.admission)
    state.metrics = ServerMetrics(state.model_name)
    state.engine = engine
    app = FastAPI(title="LightvLLM OpenAI-compatible server", version=version(),
                  lifespan=_lifespan(config, state, owns_engine=engine is None))
    app.state.server_state = state
    install_error_handlers(app)
    _add_status_routes(app, state)
    _add_generation_routes(app, state)
    _add_token_routes(app, state)
    gated = Gate(app, state, config.api_key, config.max_body_bytes)
    gated.fastapi_app = app
    gated.state = state
    return gated


def _lifespan(config: ServerConfig, state: ServerState, owns_engine: bool):
    """Start-up loads the engine in a thread (when the app owns it); shut-down ends the streams,
    then the engine."""

    async def load() -> None:
        try:
            loaded = await asyncio.to_thread(start_engine, config)
        except Exception as error:
            # one paragraph reaches the user (run_server, /health); the traceback only at DEBUG
            logger.debug("the model failed to load", exc_info=error)
            state.load_error = error
            if state.on_load_error is not None:
                state.on_load_error()
            return
        if state.draining:
            loaded.shutdown()
            return
        state.engine = loaded
        if config.gc_freeze:
            freeze_heap()  # as the engine process does
        logger.info("model %s ready (max_model_len %d)", state.model_name, state.max_model_len)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loader = asyncio.create_task(load()) if owns_engine else None
        app.state.started = time.time()
        yield
        state.shut_down_streams()
        await asyncio.sleep(0.05)  # let the streams write their last event
        if owns_engine and state.engine is not None:
            await asyncio.to_thread(state.engine.shutdown)
        state.pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


def _add_status_routes(app: FastAPI, state: ServerState) -> None:
    """/health, /startup, /version, /metrics and /v1/models."""

    @app.get("/health")
    async def health():
        if not state.ready:
            raise APIError(_not_ready(state), 503, code="server_unavailable")
        return JSONResponse({"status": "ok"})

    @app.get("/startup")
    async def startup():
        """Seconds of each engine start-up phase (``benchmarks/run_b4.py`` prints them)."""
        if state.engine is None:
            raise APIError(_not_ready(state), 503, code="server_unavailable")
        return JSONResponse({"phases": state.engine.startup_phases})

    @app.get("/version")
    async def get_version():
        return JSONResponse({"version": version()})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics():
        stats = state.engine.stats() if state.engine is not None else None
        return PlainTextResponse(state.metrics.render(stats),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models():
        card = {"id": state.model_name, "object": "model", "created": int(app.state.started),
                "owned_by": "lightvllm", "root": state.model_name, "parent": None,
                "max_model_len": state.max_model_len}
        return JSONResponse({"object": "list", "data": [card]})


def _add_generation_routes(app: FastAPI, state: ServerState) -> None:
    """/v1/completions and /v1/chat/completions, streamed as SSE when asked."""

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        result = await create_completion(state, body, request)
        return SSEResponse(result) if body.stream else JSONResponse(result)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        result = await create_chat_completion(state, body, request)
        return SSEResponse(result) if body.stream else JSONResponse(result)


def _add_token_routes(app: FastAPI, state: ServerState) -> None:
    """/tokenize and /detokenize (vLLM's extra endpoints)."""

    def check_tokenizer(model: str | None) -> None:
        state.check_model(model)
        if state.tokenizer is None:
            raise APIError("this server has no tokenizer", 400)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        check_tokenizer(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError("give exactly one of prompt or messages", 400, param="prompt")
        if body.messages is not None:
            tokens = await chat_prompt_ids(state, body.messages, body.add_generation_prompt)
        else:
            tokens = await state.off_loop(state.tokenizer.encode, body.prompt,
                                          body.add_special_tokens)
        return JSONResponse({"count": len(tokens), "max_model_len": state.max_model_len,
                             "tokens": tokens})

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        check_tokenizer(body.model)
        vocab = state.limits.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(f"token id {bad[0]} is out of range [0, {vocab})", 400, param="tokens")
        return JSONResponse({"prompt": await state.off_loop(state.tokenizer.decode, body.tokens)})


class _Server(uvicorn.Server):
    """uvicorn's server, but Ctrl-C first ends every open stream with an error event."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.lightvllm_state = state

    def handle_exit(self, sig, frame) -> None:
        self.lightvllm_state.shut_down_streams()
        super().handle_exit(sig, frame)


def make_server(config: ServerConfig, engine: AsyncLLMEngine | None = None,
                **uvicorn_kwargs) -> _Server:
    app = build_app(config, engine)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                        loop=config.event_loop, http=config.http, timeout_graceful_shutdown=5,
                        access_log=False,
                        **uvicorn_kwargs)
    server = _Server(uv, app.state)
    app.state.on_load_error = lambda: setattr(server, "should_exit", True)
    return server


class ModelLoadFailed(SystemExit):
    """``lightvllm serve`` could not load its model: exit status 1, one readable paragraph."""


def run_server(config: ServerConfig) -> None:
    """Serve until Ctrl-C (blocking); raises ``ModelLoadFailed`` (exit 1) if the model cannot
    load, after uvicorn has closed its socket."""
    server = make_server(config)
    state = server.lightvllm_state
    url = f"http://{config.host}:{config.port}"
    print(f"LightvLLM: loading {config.engine_args.model or state.model_name}; {url} answers "
          f"503 until it is ready (/health then answers 200)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it already handled
        pass
    if state.load_error is not None:
        raise ModelLoadFailed(load_failure_message(config.engine_args.model or state.model_name,
                                                   state.load_error))


def load_failure_message(model_name: str, error: BaseException) -> str:
    """One paragraph: which model, what went wrong (the loaders name the file), what to try."""
    problem = (str(error) or type(error).__name__).rstrip(".")
    return (f"lightvllm serve: could not load the model {model_name!r}: {problem}. Nothing was "
            f"served; check the path and its files (config.json, *.safetensors, tokenizer.json) "
            f"and run again with --log-level debug for the full traceback.")
