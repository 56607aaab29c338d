"""Fixtures of the VLM backbone tests: tiny model directories, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any attempt to reach a hub fails at once


@pytest.fixture(scope="session", autouse=True)
def quiet_transformers():
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """{backbone name: directory} of every tiny model (saved once per test session)."""
    from tests.helpers.vlm_factories import build_all
    return build_all(tmp_path_factory.mktemp("vlm"))
