"""Shared fixtures: the repository on sys.path, the CPU thread count and the ShapeNet-55 data fixture
(the data writers and tiny configs live in writers.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from writers import write_shapenet55  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(autouse=True)
def _default_process_settings():
    """Jobs set process-wide choices (the patch-embedding arithmetic from --embed_compute or the
    config); each test starts from the defaults."""
    from models.layers import set_embed_compute
    set_embed_compute(None)
    yield
    set_embed_compute(None)


@pytest.fixture(scope="session")
def shapenet55_root(tmp_path_factory) -> Path:
    return write_shapenet55(tmp_path_factory.mktemp("ShapeNet55-34"))
