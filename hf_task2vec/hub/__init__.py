"""Task2Vec embeddings shared as a Hugging Face Hub dataset repo (or a local folder).

* `store`: `EmbeddingStore` (push / pull / nearest / index), one commit per push;
* `index`: the store layout: key naming, content digests, ``index.parquet``;
* `card`: the generated dataset card (``README.md``);
* `backend`: the Hub repo and local folder backends (snapshot reads, all-or-nothing writes).

Every Hub call goes through `hf_task2vec.gateway` (retries, one error translation).
"""

from __future__ import annotations

from ..errors import EmbeddingNotFoundError, HubError
from .card import render_card
from .index import INDEX_COLUMNS, canonical_bytes, content_digest, embedding_key, sanitize_name
from .store import EmbeddingStore, PushResult

__all__ = [
    "EmbeddingStore",
    "HubError",
    "EmbeddingNotFoundError",
    "PushResult",
    "INDEX_COLUMNS",
    "embedding_key",
    "sanitize_name",
    "content_digest",
    "canonical_bytes",
    "render_card",
]
