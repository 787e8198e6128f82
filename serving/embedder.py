"""The predictor: ``NoteEmbedder``, a kserve.Model that turns notes into normalised vectors.

It serves either kind of model directory (:mod:`notellm.challenger`, by ``kind`` in notellm.json): NoteLLM,
or a sentence-transformers model (the MiniLM challenger), which embeds a note's title, content and
``#hashtags`` one per line (:func:`notellm.evaluation.minilm.note_text`; a plain-text instance is embedded as
sent) and cannot generate: a ``generate`` request to it is a 400. Everything else below is the same for both.

v1: ``POST /v1/models/<name>:predict`` with ``{"instances": [note, ...]}`` (a note is an object with title,
content, hashtags, category, or a plain string) answers ``{"predictions": [[...], ...], "model_version": v}``;
with ``"parameters": {"generate": ["category", "hashtags"]}`` also ``"generated": [{"category": ...,
"hashtags": [...]}, ...]``.

v2 / Open Inference Protocol (REST ``/v2/models/<name>/infer`` and gRPC): one BYTES input named ``notes`` or
``text`` whose elements are note JSON strings or plain text; the output ``embedding`` is FP32 ``[n, d]``.
The request parameter ``generate`` (a list, or a comma-separated string over gRPC) adds the BYTES outputs
``category`` (``[n]``) and ``hashtags`` (``[n]``, each a JSON list). The response parameter ``model_version``
names the model (kserve's REST client drops the response's own model_version field).

OpenAI embeddings API: ``POST /openai/v1/embeddings`` with ``{"model": <name>, "input": str | [str]}``
(:mod:`notellm.openai_embeddings`: a string is read as a v1 text instance, so it gets the same vector;
``encoding_format: "base64"`` too). KServe 0.21's own OpenAI support imports its types from vLLM
(``kserve[llm]`` pins vllm 0.24, which pins another torch), so :func:`serving.local.run_server` routes the
path to :meth:`NoteEmbedder.create_embedding`, named after kserve's ``OpenAIEncoderModel.create_embedding``.

Concurrent requests share forward passes (:class:`notellm.batching.MicroBatcher`). Bad input is a 400
(gRPC INVALID_ARGUMENT) naming the field.

In a cluster: ``python -m serving.embedder --model_name notellm-embedder --model_dir /mnt/models``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import to_http_parameters

from notellm.batching import MicroBatcher
from notellm.config import ServingConfig, load_config
from notellm.note_requests import RequestError, parse_notes
from notellm.recommend import parse_body

V1_KEYS = {"instances", "parameters"}
INPUT_NAMES = ("notes", "text")
TASKS = ("category", "hashtags")


class NoteEmbedder(kserve.Model):
    """Notes in, L2-normalised float32 vectors out (and generated category/hashtags on request)."""

    def __init__(self, name: str, model_dir: str | Path, serving: ServingConfig | None = None) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.serving = serving or ServingConfig()
        self.model: Any = None
        self._batcher: MicroBatcher | None = None

    def load(self) -> bool:
        from notellm.challenger import MODEL_JSON, load_encoder

        # KServe's storage initializer copies storageUri into /mnt/models: the model directory itself, or a
        # folder that holds it
        nested = [p.parent for p in self.model_dir.glob(f"*/{MODEL_JSON}")]
        root = nested[0] if not (self.model_dir / MODEL_JSON).exists() and len(nested) == 1 else self.model_dir
        self.model = load_encoder(root)
        self._batcher = MicroBatcher(self._embed_batch, self.serving.max_batch_size,
                                     self.serving.max_wait_ms / 1000)
        self.ready = True
        return self.ready

    @property
    def model_version(self) -> str:
        return self.model.model_version

    # --- the model ----------------------------------------------------------------------------------

    @staticmethod
    def _notes(notes: list[dict[str, Any]]) -> list[Any]:
        from notellm.model.prompt import Note

        return [Note(n.get("note_id", ""), n["title"], n["content"], tuple(n["hashtags"]), n["category"])
                for n in notes]

    @property
    def generates(self) -> bool:
        """Whether the model can generate categories and hashtags (NoteLLM can; a sentence encoder cannot)."""
        from notellm.challenger import SentenceEncoder

        return not isinstance(self.model, SentenceEncoder)

    def _embed_batch(self, notes: list[Any]) -> list[np.ndarray]:
        from notellm.challenger import encode_notes

        return list(encode_notes(self.model, notes, batch_size=self.serving.max_batch_size))

    async def embed(self, notes: list[dict[str, Any]]) -> tuple[np.ndarray, str]:
        """Vectors (n, d) of validated notes (``notellm.note_requests.parse_note``) and the model version.

        The recommender calls this directly when both run in one server.
        """
        assert self._batcher is not None, "load() first"
        rows = await self._batcher.submit(self._notes(notes))
        return np.stack(rows).astype(np.float32, copy=False), self.model_version

    async def generate(self, notes: list[dict[str, Any]], tasks: tuple[str, ...]) -> list[dict[str, Any]]:
        """Per note, the generated ``category`` and/or ``hashtags`` (greedy decoding)."""
        from notellm.model import generate_for_notes

        frame = await asyncio.to_thread(generate_for_notes, self.model, self._notes(notes), tasks=tasks)
        return [{task: row[task] for task in tasks} for row in frame.to_dict("records")]

    # --- the protocols ------------------------------------------------------------------------------

    async def create_embedding(self, payload: Any) -> dict[str, Any]:
        """OpenAI's embeddings answer for a request body (a parsed JSON value); an
        :class:`notellm.openai_embeddings.OpenAIRequestError` for a bad one."""
        from notellm import openai_embeddings as oai

        notes, fmt = oai.parse_request(payload, self.name, self.model.dim, self.serving.max_request_notes,
                                       self.serving.max_note_chars)
        vectors, _ = await self.embed(notes)
        if self.generates:
            tokens = sum(len(self.model.prompter.embedding_ids(note)) for note in self._notes(notes))
        else:
            tokens = self.model.token_count(self._notes(notes))
        return oai.response(vectors, self.name, tokens, fmt)

    @staticmethod
    def _tasks(value: Any, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RequestError(f"{where}: expected a list of task names {list(TASKS)}")
        unknown = sorted(set(value) - set(TASKS))
        if unknown:
            raise RequestError(f"{where}: unknown task(s) {unknown}; choose from {list(TASKS)}")
        return tuple(t for t in TASKS if t in value)

    def _parse_v1(self, payload: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        unknown = sorted(set(payload) - V1_KEYS)
        if unknown:
            raise RequestError(f"request: unknown field(s) {unknown}; expected {sorted(V1_KEYS)}")
        if "instances" not in payload:
            raise RequestError("instances: missing (a list of notes)")
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(f"parameters: expected an object, got {type(params).__name__}")
        unknown = sorted(set(params) - {"generate"})
        if unknown:
            raise RequestError(f"parameters: unknown field(s) {unknown}; expected ['generate']")
        notes = parse_notes(payload["instances"], "instances", self.serving.max_request_notes,
                            self.serving.max_note_chars)
        return notes, self._tasks(params.get("generate"), "parameters.generate")

    def _parse_v2(self, request: InferRequest) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        names = [i.name for i in request.inputs]
        matching = [i for i in request.inputs if i.name in INPUT_NAMES]
        if len(matching) != 1 or len(names) != 1:
            raise RequestError(f"inputs: expected one input named 'notes' or 'text', got {names}")
        tensor = matching[0]
        where = f"inputs[{tensor.name}]"
        if tensor.datatype != "BYTES":
            raise RequestError(f"{where}: expected datatype BYTES (note JSON or text), got {tensor.datatype}")
        try:
            raws = np.asarray(tensor.as_numpy(), dtype=object).ravel().tolist()
        except (ValueError, TypeError) as exc:
            raise RequestError(f"{where}: data does not match shape {tensor.shape}") from exc
        notes = parse_notes(raws, where, self.serving.max_request_notes, self.serving.max_note_chars)
        params = to_http_parameters(request.parameters) if request.parameters else {}
        unknown = sorted(set(params) - {"generate", "binary_data_output"})
        if unknown:
            raise RequestError(f"parameters: unknown field(s) {unknown}; expected ['generate']")
        return notes, self._tasks(params.get("generate"), "parameters.generate")

    async def _run(self, notes: list[dict[str, Any]],
                   tasks: tuple[str, ...]) -> tuple[np.ndarray, list[dict[str, Any]] | None]:
        if tasks and not self.generates:
            raise RequestError(f"parameters.generate: model {self.model_version} is a sentence-transformers "
                               "model and cannot generate; send no 'generate' parameter")
        if tasks:
            (vectors, _), generated = await asyncio.gather(self.embed(notes), self.generate(notes, tasks))
            return vectors, generated
        vectors, _ = await self.embed(notes)
        return vectors, None

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        try:
            if isinstance(payload, InferRequest):
                notes, tasks = self._parse_v2(payload)
                vectors, generated = await self._run(notes, tasks)
                return self._v2_response(payload, vectors, generated, tasks)
            if isinstance(payload, (bytes, str)):  # a body sent without Content-Type: application/json
                payload = parse_body(payload)
            if not isinstance(payload, dict):
                raise RequestError(f"request: expected a JSON object, got {type(payload).__name__}")
            notes, tasks = self._parse_v1(payload)
            vectors, generated = await self._run(notes, tasks)
        except RequestError as exc:
            raise InvalidInput(str(exc)) from exc
        response: dict[str, Any] = {"predictions": vectors.tolist(), "model_version": self.model_version}
        if generated is not None:
            response["generated"] = generated
        return response

    def _v2_response(self, request: InferRequest, vectors: np.ndarray, generated: list[dict[str, Any]] | None,
                     tasks: tuple[str, ...]) -> InferResponse:
        arrays = {"embedding": vectors}
        for task in tasks:
            assert generated is not None
            arrays[task] = np.array([g[task] if task == "category" else json.dumps(g[task]) for g in generated],
                                    dtype=object)
        outputs = []
        for name, array in arrays.items():
            output = InferOutput(name, list(array.shape), "FP32" if name == "embedding" else "BYTES")
            # set the data here: kserve's to_grpc fails on numpy data when the client sent raw inputs
            output.set_data_from_numpy(array, binary_data=request.use_binary_outputs)
            outputs.append(output)
        # kserve answers 500 when a v2 response has no id: give one when the client sent none. The model
        # version goes into the parameters too: kserve's REST client drops the model_version field.
        return InferResponse(response_id=request.id or uuid.uuid4().hex, model_name=self.name,
                             model_version=self.model_version, infer_outputs=outputs,
                             parameters={"model_version": self.model_version},
                             use_binary_outputs=request.use_binary_outputs)


def main(argv: list[str] | None = None) -> None:
    """Serve the embedder alone (the InferenceService predictor): binds 0.0.0.0 unless --host is given."""
    from serving.local import run_server

    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], description=main.__doc__)
    parser.add_argument("--model_dir", default="/mnt/models", help="the model directory (KServe: /mnt/models)")
    parser.add_argument("--config_file", default=None, help="a notellm YAML config (its serving section is used)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (a pod: 0.0.0.0)")
    parser.set_defaults(model_name=None)
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file)
    model = NoteEmbedder(args.model_name or cfg.serving.embedder_name, args.model_dir, cfg.serving)
    model.load()
    run_server([model], host=args.host, http_port=args.http_port,
               grpc_port=args.grpc_port if args.enable_grpc else None, options=vars(args))


if __name__ == "__main__":
    main()
