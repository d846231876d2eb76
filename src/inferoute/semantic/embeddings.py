"""Sentence embeddings for semantic routing, computed offline on the CPU.

Two implementations of `Embedder`:

- `WordLlamaEmbedder`: the 256-dimension WordLlama weights shipped inside the `wordllama`
  wheel. Loading never touches the network: the package folder is passed as the cache folder
  and downloads are disabled, so a missing file is an error, not a download. Embedding is a
  token lookup plus a mean, done here directly on the token ids (about 20 microseconds for a
  short prompt).
- `SentenceTransformerEmbedder`: a sentence-transformers model from a local folder, for users
  who have one on disk. `sentence-transformers` is optional and imported only when asked for.

Vectors are float32 and L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..core.errors import ConfigError


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    def embed(self, text: str) -> np.ndarray:
        """One text -> a (dim,) vector."""
        ...

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """Many texts -> an (n, dim) matrix."""
        ...


def _normalise_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (m / norms).astype(np.float32, copy=False)


def wordllama_package_dir() -> Path:
    """The installed wordllama package folder (it holds weights/ and tokenizers/)."""
    try:
        import wordllama
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConfigError("the 'wordllama' package is not installed "
                          "(pip install wordllama)") from exc
    return Path(os.path.dirname(wordllama.__file__))


class WordLlamaEmbedder:
    """WordLlama token-embedding mean, from the weights bundled in the wheel (no network)."""

    def __init__(self, dim: int = 256, config: str = "l2_supercat") -> None:
        import logging

        root_level = logging.getLogger().level
        root_handlers = list(logging.getLogger().handlers)
        try:
            from wordllama import WordLlama
        finally:
            # wordllama's inference module calls logging.basicConfig() on import; undo that so
            # importing us never reconfigures the host application's logging.
            root = logging.getLogger()
            for h in list(root.handlers):
                if h not in root_handlers:
                    root.removeHandler(h)
            root.setLevel(root_level)
        pkg = wordllama_package_dir()
        try:
            model = WordLlama.load(config=config, dim=dim, cache_dir=pkg, disable_download=True)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"cannot load the bundled wordllama weights "
                              f"(config={config!r}, dim={dim}) from {pkg}: {exc}") from None
        self.name = f"wordllama-{config}-{dim}"
        self.dim = int(model.embedding.shape[1])
        self._table = np.ascontiguousarray(model.embedding, dtype=np.float32)
        self._tokenizer = model.tokenizer
        self._vocab = self._table.shape[0]

    def embed(self, text: str) -> np.ndarray:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        if max(ids) >= self._vocab:  # never for the bundled pair; wordllama clips the same way
            ids = [min(i, self._vocab - 1) for i in ids]
        v = self._table[ids].sum(axis=0)  # the mean's direction; normalised below
        n = float(np.sqrt(v @ v))
        return v / n if n > 0 else v

    def embed_many(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.embed(t) for t in texts]).astype(np.float32, copy=False)


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder (optional dependency)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ConfigError(f"sentence-transformers model folder not found: {p} "
                              f"(give the path of a model saved on disk; nothing is downloaded)")
        try:
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("embedder kind 'sentence-transformers' needs the optional "
                              "package: pip install sentence-transformers") from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self._model = SentenceTransformer(str(p), device=device, local_files_only=True)
        self.name = f"sentence-transformers:{p.name}"
        self.dim = int(self._model.get_sentence_embedding_dimension())

    def embed(self, text: str) -> np.ndarray:
        return self.embed_many([text])[0]

    def embed_many(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        m = np.asarray(self._model.encode(texts, convert_to_numpy=True), dtype=np.float32)
        return _normalise_rows(m)


class CaseRobustEmbedder:
    """Mean of the embeddings of a text as written and lower-cased (re-normalised).

    WordLlama's tokenizer is case-sensitive, so "what is GDP" and "What is GDP?" land a little
    apart; averaging with the lower-cased text makes classification robust to casing (and
    measured slightly better on our evaluation set) at the cost of a second lookup. Texts
    longer than `max_chars` are embedded once: with many tokens casing matters little, and
    tokenizing is the dominant cost.
    """

    def __init__(self, base: Embedder, max_chars: int = 512) -> None:
        self.base = base
        self.max_chars = max_chars
        self.name = f"{base.name}+lowercase"
        self.dim = base.dim

    def embed(self, text: str) -> np.ndarray:
        v = self.base.embed(text)
        if len(text) > self.max_chars:
            return v
        low = text.lower()
        if low != text:
            v = v + self.base.embed(low)
        n = float(np.sqrt(v @ v))
        return (v / n).astype(np.float32, copy=False) if n > 0 else v

    def embed_many(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.embed(t) for t in texts])


_WORDLLAMA_CACHE: dict[tuple[int, str], WordLlamaEmbedder] = {}


def load_embedder(kind: str = "wordllama", *, dim: int = 256, path: str | None = None,
                  config: str = "l2_supercat") -> Embedder:
    """Build an embedder by kind: "wordllama" (bundled, shared per process) or
    "sentence-transformers" (needs `path`)."""
    if kind == "wordllama":
        key = (dim, config)
        emb = _WORDLLAMA_CACHE.get(key)
        if emb is None:
            emb = _WORDLLAMA_CACHE[key] = WordLlamaEmbedder(dim=dim, config=config)
        return emb
    if kind == "sentence-transformers":
        if not path:
            raise ConfigError("embedder kind 'sentence-transformers' needs 'path' "
                              "(a model folder on disk)")
        return SentenceTransformerEmbedder(path)
    raise ConfigError(f"unknown embedder kind {kind!r}: use 'wordllama' or "
                      f"'sentence-transformers'")
