"""Shared fixtures."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# Tests never touch the user's data cache: generated data sets go to one temporary folder for
# the session (shared by the tests, and by the CLI processes they start, which inherit it).
os.environ.setdefault("SWITCHEMA_CACHE_DIR", tempfile.mkdtemp(prefix="switchema-test-cache-"))
# `--jobs auto` runs the tests' small studies in this process, as they always ran.
os.environ.setdefault("SWITCHEMA_AUTO_JOBS", "1")


@pytest.fixture
def one_thread():
    """One torch intra-op thread, as the lab's jobs run: tiny models are fastest with one, and
    steadier on a loaded machine. Test files use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
