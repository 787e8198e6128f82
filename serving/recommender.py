"""The transformer: ``NoteRecommender``, a kserve.Model answering related notes (logic in notellm.recommend).

``POST /v1/models/<name>:predict`` with ``{"instances": [{"note_id": "n1"}, {"title": ..., "content": ...,
"note_id": "new"}, "plain text"], "top_k": 10, "upsert": false}`` (``top_k``/``upsert`` may also sit under
``"parameters"``) answers ``{"predictions": [{"note_id", "source", "upserted", "related": [{"note_id",
"score", "category", "features"}, ...]}, ...]}``. A stored note's vector comes from Milvus; a note known only
to Feast, or a new note, is embedded by the predictor: in-process (``embedder=``, the local server) or over
HTTP/gRPC (``predictor_host``, in a cluster) with v1, v2 or grpc-v2.

Errors: bad input 400, unknown note_id 404, Milvus/Feast/predictor down 503 (with the reason; calls time
out), predictor rejecting input 400.

In a cluster: ``python -m serving.recommender --model_name notellm --predictor_host notellm-predictor
--milvus_uri http://notellm-milvus:19530`` plus ``--feature_repo DIR`` or ``--feast_url URL``
(env ``NOTELLM_FEAST_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve import InferInput, InferRequest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import to_http_parameters

from notellm.config import Config, load_config
from notellm.note_requests import RequestError
from notellm.recommend import FeatureServerClient, Recommender, ServiceUnavailable, parse_body, parse_request

PROTOCOLS = ("v1", "v2", "grpc-v2")


class NoteRecommender(kserve.Model):
    """Related notes for stored or new notes: Milvus top-k with Feast features, new notes via the predictor."""

    def __init__(self, name: str, cfg: Config, *, feature_repo: str | Path | None = None,
                 feast_url: str | None = None, embedder: Any = None, predictor_host: str | None = None,
                 predictor_protocol: str = "v1", predictor_model: str | None = None,
                 predictor_timeout_s: float = 30.0, predictor_use_ssl: bool = False) -> None:
        super().__init__(name)
        if (embedder is None) == (predictor_host is None):
            raise ValueError("give exactly one of embedder (in-process) and predictor_host")
        if predictor_protocol not in PROTOCOLS:
            raise ValueError(f"predictor_protocol must be one of {PROTOCOLS}, got {predictor_protocol!r}")
        self.cfg = cfg
        self.feature_repo = feature_repo
        self.feast_url = feast_url
        self.embedder = embedder
        self.predictor_host = predictor_host
        self.predictor_protocol = predictor_protocol
        self.predictor_model = predictor_model or cfg.serving.embedder_name
        self.predictor_timeout_s = predictor_timeout_s
        scheme = "https" if predictor_use_ssl else "http"
        self.predictor_url = f"{scheme}://{predictor_host}" if predictor_host else None
        self._client: Any = None
        self.recommender: Recommender | None = None

    def load(self) -> bool:
        from notellm.vectorstore import NoteIndex

        features: Any = None
        if self.feature_repo is not None:
            from notellm.features import FeatureRepo

            features = FeatureRepo(self.feature_repo)
            features.store  # noqa: B018 - import feast and read the registry now, not on the first request
        elif self.feast_url:
            features = FeatureServerClient(self.feast_url, timeout_s=self.cfg.index.timeout_s)
        self.recommender = Recommender(NoteIndex(self.cfg.index), features, self._embed, self.cfg.serving)
        self.ready = True
        return self.ready

    # --- the predictor --------------------------------------------------------------------------------

    def _predictor_client(self) -> Any:
        """kserve's REST or gRPC client, made on first use (inside the server's event loop)."""
        if self._client is not None:
            return self._client
        if self.predictor_protocol == "grpc-v2":
            from kserve import InferenceGRPCClient

            self._client = InferenceGRPCClient(self.predictor_host, timeout=self.predictor_timeout_s, retries=0)
        else:
            from kserve import InferenceRESTClient, RESTConfig

            self._client = InferenceRESTClient(RESTConfig(protocol=self.predictor_protocol, retries=0,
                                                          timeout=self.predictor_timeout_s))
        return self._client

    async def _embed(self, notes: list[dict[str, Any]]) -> tuple[np.ndarray, str]:
        """Vectors and model version from the embedder in-process, or from the predictor (errors mapped)."""
        if self.embedder is not None:
            return await self.embedder.embed(notes)
        import grpc
        import httpx

        where = f"the predictor {self.predictor_model!r} at {self.predictor_host}"
        try:
            return await self._call_predictor(notes)
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if 400 <= status < 500 and status != 404:
                raise RequestError(f"{where} rejected the notes: {_reason(exc.response)}") from exc
            raise ServiceUnavailable(f"{where} answered {status}: {_reason(exc.response)}") from exc
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"{where} did not answer within {self.predictor_timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"cannot reach {where}: {exc}") from exc
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise RequestError(f"{where} rejected the notes: {details}") from exc
            raise ServiceUnavailable(f"{where} failed over gRPC ({code.name}): {details}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ServiceUnavailable(f"{where} gave an answer without embeddings: {exc}") from exc

    async def _call_predictor(self, notes: list[dict[str, Any]]) -> tuple[np.ndarray, str]:
        client = self._predictor_client()
        if self.predictor_protocol == "v1":
            body = await client.infer(self.predictor_url, {"instances": notes}, model_name=self.predictor_model)
            return np.asarray(body["predictions"], dtype=np.float32), str(body.get("model_version"))
        request = InferRequest(self.predictor_model, [InferInput(
            "notes", [len(notes)], "BYTES", data=[json.dumps(n) for n in notes])], request_id=uuid.uuid4().hex)
        if self.predictor_protocol == "v2":
            response = await client.infer(self.predictor_url, request, model_name=self.predictor_model)
        else:
            response = await client.infer(request)
        params = to_http_parameters(response.parameters) if response.parameters else {}
        return (np.asarray(response.get_output_by_name("embedding").as_numpy(), dtype=np.float32),
                str(params.get("model_version") or response.model_version))

    # --- requests -------------------------------------------------------------------------------------

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        assert self.recommender is not None, "load() first"
        try:
            if isinstance(payload, InferRequest):
                raise RequestError(f"the recommender speaks the v1 protocol: POST /v1/models/{self.name}:predict "
                                   'with {"instances": [{"note_id": ...} or notes], "top_k": k}')
            if isinstance(payload, (bytes, str)):  # a body sent without Content-Type: application/json
                payload = parse_body(payload)
            request = parse_request(payload, self.cfg.serving)
            return {"predictions": await self.recommender.recommend(request)}
        except RequestError as exc:
            raise InvalidInput(str(exc)) from exc


def _reason(response: Any) -> str:
    try:
        return str(response.json().get("error") or response.text)[:500]
    except ValueError:
        return response.text[:500]


def main(argv: list[str] | None = None) -> None:
    """Serve the recommender alone (the InferenceService transformer), calling the predictor over the network."""
    from serving.local import run_server

    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], description=main.__doc__)
    parser.add_argument("--config_file", default=None, help="a notellm YAML config (serving and index sections)")
    parser.add_argument("--milvus_uri", default=None, help="overrides index.uri")
    parser.add_argument("--feature_repo", default=None, help="a Feast repository directory")
    parser.add_argument("--feast_url", default=os.environ.get("NOTELLM_FEAST_URL"),
                        help="a Feast feature server (default: env NOTELLM_FEAST_URL)")
    parser.add_argument("--embedder_name", default=None, help="the predictor's model name")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (a pod: 0.0.0.0)")
    parser.set_defaults(model_name=None, predictor_request_timeout_seconds=30)
    args = parser.parse_args(argv)
    if not args.predictor_host:
        parser.error("--predictor_host is required (host[:port] of the embedder)")
    overrides = [f"index.uri={args.milvus_uri}"] if args.milvus_uri else []
    cfg = load_config(args.config_file, overrides)
    protocol = args.predictor_protocol if args.predictor_protocol != "v1" else args.protocol
    model = NoteRecommender(
        args.model_name or cfg.serving.recommender_name, cfg, feature_repo=args.feature_repo,
        feast_url=args.feast_url, predictor_host=args.predictor_host, predictor_protocol=protocol,
        predictor_model=args.embedder_name, predictor_timeout_s=args.predictor_request_timeout_seconds,
        predictor_use_ssl=args.predictor_use_ssl)
    model.load()
    run_server([model], host=args.host, http_port=args.http_port,
               grpc_port=args.grpc_port if args.enable_grpc else None, options=vars(args))


if __name__ == "__main__":
    main()
