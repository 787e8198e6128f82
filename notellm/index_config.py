"""The ``index`` section of the configuration: where the Milvus vector store lives and how it is indexed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from notellm.section import Section

MILVUS_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class IndexConfig(Section):
    """Milvus connection, serving alias, HNSW parameters and batch sizes."""

    uri: str = Field(
        "workspace/milvus.db",
        description="a local path ending in .db (embedded Milvus Lite) or http://host:port (a Milvus server, "
                    "standalone or cluster, or a `milvus-lite server`)")
    token_env: str | None = Field(
        "MILVUS_TOKEN", description="environment variable holding the Milvus token (user:password), if any")
    alias: str = Field("notellm_notes", pattern=MILVUS_NAME_PATTERN, max_length=64,
                       description="the alias readers query; each model version gets its own collection")
    hnsw_m: int = Field(16, ge=2, le=2048, description="HNSW M (graph degree)")
    hnsw_ef_construction: int = Field(200, ge=1, description="HNSW efConstruction")
    search_ef: int = Field(128, ge=1, description="HNSW ef at query time (raised to the limit if smaller)")
    metric: Literal["COSINE"] = "COSINE"
    insert_batch_size: int = Field(5_000, ge=1, le=100_000, description="rows per insert/upsert call")
    search_batch_size: int = Field(1_024, ge=1, le=16_384, description="queries per search call")
    keep_collections: int = Field(
        2, ge=1, description="collections kept per alias after a swap, the serving one included")
    timeout_s: float = Field(
        30.0, gt=0, description="connect timeout and timeout of each read (search, get, count)")
