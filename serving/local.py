"""Run KServe models: both NoteLLM models in one server locally (``serve``), or any list (``run_server``).

KServe 0.21's ``ModelServer.start`` binds REST to 0.0.0.0 and gRPC to [::] with no host setting. So
``run_server`` assembles the same parts itself (kserve's ModelServer for the model registry and data plane,
its ``RESTServer`` application and ``GRPCServer``) and binds them to ``host``: loopback (``serving.host``,
127.0.0.1) for a local server, 0.0.0.0 inside a pod (the ``python -m serving.embedder`` /
``serving.recommender`` mains). It also answers errors its own way, ``{"error": message}`` with no exception
class names or stack traces: bad input 400 (a body that is not a v2 request 422), unknown model or note 404,
a backend down 503, anything else 500 "internal error" (logged with its traceback).

It also routes OpenAI's ``POST /openai/v1/embeddings`` to the models that implement ``create_embedding``
(kserve 0.21 registers its own ``/openai/v1`` routes only when vLLM is installed: see serving.embedder);
errors there take OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from notellm.config import Config
from notellm.errors import ConfigError, NoteLLMError

log = logging.getLogger(__name__)


def wait_ready(url: str, process: subprocess.Popen, output: Callable[[], str], timeout_s: float = 120) -> None:
    """Poll ``url`` (a health route) until it answers 200; a RuntimeError with the tail of ``output()`` if
    the server process exits first or ``timeout_s`` passes."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{output()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server at {url} was not ready after {timeout_s:.0f} s:\n{output()[-3000:]}")


def _error_handlers() -> dict[type[BaseException], Any]:
    """Exception class -> handler answering ``{"error": message}`` with the status that fits."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from notellm.note_requests import RequestError
    from notellm.recommend import NoteNotFound, ServiceUnavailable
    from notellm.vectorstore import UnknownNoteError

    def answer(status: int) -> Any:
        async def handler(_: Any, exc: BaseException) -> JSONResponse:
            log.warning("answered %d: %s", status, exc)
            return JSONResponse(status_code=status, content={"error": str(exc)})
        return handler

    async def invalid_body(_: Any, exc: RequestValidationError) -> JSONResponse:
        # kserve's v2 route accepts an InferenceRequest or raw bytes: leave out the bytes branch's complaint
        problems = [f"the body is not valid JSON (at character {e['loc'][-1]}: {e.get('ctx', {}).get('error')})"
                    if e["type"] == "json_invalid" else f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors() if e["loc"][-1:] != ("bytes",)]
        return JSONResponse(status_code=422, content={"error": "; ".join(problems) or "invalid request body"})

    async def http_error(_: Any, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (an undecodable body, an unknown route) in the same {"error"} shape
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)

    return {InvalidInput: answer(400), RequestError: answer(400), NoteNotFound: answer(404),
            UnknownNoteError: answer(404), ServiceUnavailable: answer(503), RequestValidationError: invalid_body,
            StarletteHTTPException: http_error}


class InternalErrors:
    """ASGI middleware: an unexpected exception becomes a 500 ``{"error": "internal error ..."}``.

    Starlette's own handler for ``Exception`` re-raises after answering, which makes uvicorn drop the
    keep-alive connection (the client's next request on it fails); this one answers and stops there.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            from fastapi.responses import JSONResponse

            await JSONResponse(status_code=500, content={"error": "internal error (see the server log)"})(
                scope, receive, send)


OPENAI_EMBEDDINGS = "/openai/v1/embeddings"


def _register_openai(app: Any, models: Sequence[Any]) -> None:
    """``POST /openai/v1/embeddings`` on ``app`` for the models with a ``create_embedding`` method."""
    embedders = {m.name: m for m in models if hasattr(m, "create_embedding")}
    if not embedders:
        return
    from fastapi.responses import JSONResponse
    from starlette.requests import Request

    from notellm.note_requests import RequestError
    from notellm.openai_embeddings import OpenAIRequestError, error_body

    async def embeddings(request: Request) -> JSONResponse:
        try:
            try:
                payload = json.loads(await request.body())
            except (ValueError, RecursionError) as exc:
                raise OpenAIRequestError(f"the body is not valid JSON ({exc})") from exc
            name = payload.get("model") if isinstance(payload, dict) else None
            model = embedders.get(name) if isinstance(name, str) else None
            return JSONResponse(await (model or next(iter(embedders.values()))).create_embedding(payload))
        except RequestError as exc:
            status, body = error_body(exc)
            log.warning("answered %d: %s", status, exc)
            return JSONResponse(status_code=status, content=body)

    app.add_route(OPENAI_EMBEDDINGS, embeddings, methods=["POST"])  # a plain Starlette route: no body model


def _grpc_server(host: str, port: int, dataplane: Any, extension: Any, options: dict[str, Any]) -> Any:
    """kserve's GRPCServer, bound to ``host`` (its own start() binds [::])."""
    from grpc import aio
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer

    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"

    class BoundGRPCServer(GRPCServer):
        async def start(self, max_workers: int) -> None:
            from concurrent import futures

            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                         ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length"))])
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
            self._server.add_insecure_port(address)
            log.info("gRPC server on %s", address)
            await self._server.start()
            await self._server.wait_for_termination()

    server = BoundGRPCServer(port, dataplane, extension, kwargs=options)
    return server, server.start(options["max_threads"])


def run_server(models: Sequence[Any], *, host: str, http_port: int, grpc_port: int | None = None,
               options: dict[str, Any] | None = None) -> None:
    """Serve loaded kserve models on ``host:http_port`` (REST v1 and v2) and ``host:grpc_port`` (gRPC v2).

    ``options`` are kserve's command-line settings (the mains pass theirs; default: kserve's defaults);
    gRPC uses its thread count and message size limits. Blocks until interrupted (SIGINT/SIGTERM: uvicorn
    stops gracefully, then gRPC).
    """
    import uvicorn
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app, parser
    from kserve.predictor_config import PredictorConfig
    from kserve.protocol.rest.server import RESTServer

    options = {**vars(parser.parse_args([])), **(options or {})}
    not_ready = [m.name for m in models if not m.ready]
    if not_ready:
        raise RuntimeError(f"models not loaded: {not_ready}")
    server = ModelServer(http_port=http_port, grpc_port=grpc_port or 0, enable_grpc=grpc_port is not None,
                         workers=1, predictor_config=PredictorConfig(predictor_host=None))
    for model in models:
        server.register_model(model)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, http_port,
                      event_loop=options["event_loop"], timeout_keep_alive=options["timeout_keep_alive"])
    rest.config.host = host  # kserve hard-codes 0.0.0.0
    rest.create_application()
    _register_openai(app, models)
    for exc_class, handler in _error_handlers().items():
        app.add_exception_handler(exc_class, handler)
    app.add_middleware(InternalErrors)
    http = uvicorn.Server(rest.config)

    async def serve() -> None:
        if grpc_port is None:
            await http.serve()
            return
        grpc, start = _grpc_server(host, grpc_port, server.dataplane, server.model_repository_extension, options)
        task = asyncio.ensure_future(start)
        task.add_done_callback(lambda _: setattr(http, "should_exit", True))  # gRPC gone: stop REST too
        try:
            await http.serve()
        finally:
            await grpc.stop()
            task.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise NoteLLMError(f"the gRPC server on {host}:{grpc_port} failed: {task.exception()}")

    log.info("serving %s on http://%s:%d%s", [m.name for m in models], host, http_port,
             f" and grpc {host}:{grpc_port}" if grpc_port is not None else "")
    asyncio.run(serve())


def build_models(cfg: Config, model_dir: str | Path, feature_repo: str | Path | None) -> list[Any]:
    """The embedder and the recommender (which calls the embedder in-process), both loaded."""
    from serving.embedder import NoteEmbedder
    from serving.recommender import NoteRecommender

    embedder = NoteEmbedder(cfg.serving.embedder_name, model_dir, cfg.serving)
    embedder.load()
    recommender = NoteRecommender(cfg.serving.recommender_name, cfg, feature_repo=feature_repo, embedder=embedder)
    recommender.load()
    return [embedder, recommender]


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback ``host`` unless ``allow_remote``: the local server has no authentication."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if not loopback and not allow_remote:
        raise ConfigError(f"serving.host {host!r} is not a loopback address and the local server has no "
                          "authentication: pass --allow-remote to expose it on the network anyway")
    if not loopback:
        log.warning("serving on %s: reachable from the network, without authentication", host)


def serve(cfg: Config, model_dir: str | Path, feature_repo: str | Path | None, http_port: int | None = None,
          grpc_port: int | None = None, allow_remote: bool = False) -> None:
    """Serve both models on ``cfg.serving.host`` (loopback by default) until interrupted.

    Any other host is refused unless ``allow_remote`` (see :func:`check_bind`).

    REST on ``http_port`` (default ``cfg.serving.http_port``), gRPC on ``grpc_port`` (None: no gRPC).
    Milvus comes from ``cfg.index`` (a ``*.db`` path opens it in this process only: use a ``milvus-lite
    server`` URI to index while serving); ``feature_repo`` is a Feast repository directory (None: no
    features in the answers, and only indexed notes can be looked up by id).
    """
    check_bind(cfg.serving.host, allow_remote)
    models = build_models(cfg, model_dir, feature_repo)
    run_server(models, host=cfg.serving.host, http_port=http_port or cfg.serving.http_port, grpc_port=grpc_port)
