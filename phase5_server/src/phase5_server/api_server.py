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
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from phase3_scheduling import AsyncLLMEngine, EngineArgs
from phase3_scheduling.core_client import AsyncMPClient

from .errors import APIError, error_body, install_error_handlers
from .metrics import ServerMetrics
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .serving_chat import create_chat_completion, render_chat
from .serving_completions import create_completion
from .serving_engine import ServerState

logger = logging.getLogger("lightvllm.server")
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


@dataclass
class ServerConfig:
    engine_args: EngineArgs
    served_model_name: str | None = None
    api_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 4 * 2**20
    log_level: str = "warning"
    engine_process: bool = True  # False: the engine runs in a thread of the API process

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
    """Server-sent events whose generator is always closed, so a dropped client aborts its request."""

    media_type = "text/event-stream"

    def __init__(self, content):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()


class Gate:
    """API key, readiness and body size, checked before routing (pure ASGI: no stream buffering)."""

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
            if b"content-type" not in dict(scope["headers"]):  # curl -d sends none: JSON is meant
                scope = dict(scope, headers=[*scope["headers"], (b"content-type", b"application/json")])
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)


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
        return AsyncMPClient(config.engine_args, log_level=config.log_level)
    return AsyncLLMEngine.from_engine_args(config.engine_args)


def build_app(config: ServerConfig, engine: AsyncLLMEngine | None = None) -> FastAPI:
    """The app; with ``engine`` it serves that engine (and never shuts it down), else it loads one."""
    state = ServerState(model_name=config.model_name(), metrics=None)  # type: ignore[arg-type]
    state.metrics = ServerMetrics(state.model_name)
    state.engine = engine
    owns_engine = engine is None

    async def load() -> None:
        try:
            loaded = await asyncio.to_thread(start_engine, config)
        except Exception as error:
            logger.exception("the model failed to load")
            state.load_error = error
            if getattr(state, "on_load_error", None):
                state.on_load_error()
            return
        if state.draining:
            loaded.shutdown()
            return
        state.engine = loaded
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

    app = FastAPI(title="LightvLLM OpenAI-compatible server", version=version(), lifespan=lifespan)
    app.state.server_state = state
    install_error_handlers(app)

    @app.get("/health")
    async def health():
        if not state.ready:
            raise APIError(_not_ready(state), 503, code="server_unavailable")
        return JSONResponse({"status": "ok"})

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

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        result = await create_completion(state, body, request)
        return SSEResponse(result) if body.stream else JSONResponse(result)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        result = await create_chat_completion(state, body, request)
        return SSEResponse(result) if body.stream else JSONResponse(result)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        state.check_model(body.model)
        if state.tokenizer is None:
            raise APIError("this server has no tokenizer", 400)
        if (body.prompt is None) == (body.messages is None):
            raise APIError("give exactly one of prompt or messages", 400, param="prompt")
        text = body.prompt if body.prompt is not None else render_chat(
            state, body.messages, body.add_generation_prompt)
        tokens = state.tokenizer.encode(text, add_special_tokens=body.add_special_tokens)
        return JSONResponse({"count": len(tokens), "max_model_len": state.max_model_len,
                             "tokens": tokens})

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        state.check_model(body.model)
        if state.tokenizer is None:
            raise APIError("this server has no tokenizer", 400)
        vocab = state.engine.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(f"token id {bad[0]} is out of range [0, {vocab})", 400, param="tokens")
        return JSONResponse({"prompt": state.tokenizer.decode(body.tokens)})

    gated = Gate(app, state, config.api_key, config.max_body_bytes)
    gated.fastapi_app = app  # type: ignore[attr-defined]
    gated.state = state
    return gated  # type: ignore[return-value]


class _Server(uvicorn.Server):
    """uvicorn's server, but Ctrl-C first ends every open stream with an error event."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.lightvllm_state = state

    def handle_exit(self, sig, frame) -> None:
        self.lightvllm_state.shut_down_streams()
        super().handle_exit(sig, frame)


def make_server(config: ServerConfig, engine: AsyncLLMEngine | None = None,
                **uvicorn_kwargs) -> uvicorn.Server:
    app = build_app(config, engine)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                        timeout_graceful_shutdown=5, access_log=False, **uvicorn_kwargs)
    server = _Server(uv, app.state)
    app.state.on_load_error = lambda: setattr(server, "should_exit", True)
    return server


def run_server(config: ServerConfig) -> None:
    """Serve until Ctrl-C (blocking)."""
    server = make_server(config)
    print(f"LightvLLM serving {server.lightvllm_state.model_name} on http://{config.host}:{config.port} "
          f"(the model loads in the background; /health answers 200 once it is ready)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it already handled
        pass
