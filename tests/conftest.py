"""Shared fixtures: the repository on sys.path, the CPU thread count and the ShapeNet-55 data fixture
(the data writers and tiny configs live in writers.py). No process-wide model settings exist to
reset between tests: models take their compute switches as constructor arguments."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from writers import write_shapenet55  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="session", autouse=True)
def session_temp_dir(tmp_path_factory):
    """TMPDIR for the session (this process and the commands tests start): the lists of refused files
    that the readers write to the system's temporary folder land under pytest's own temporary folder,
    which pytest prunes, instead of accumulating in /tmp run after run."""
    folder = tmp_path_factory.mktemp("TMPDIR")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        patch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
        yield folder
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def shapenet55_root(tmp_path_factory) -> Path:
    return write_shapenet55(tmp_path_factory.mktemp("ShapeNet55-34"))


@pytest.fixture
def losses(monkeypatch):
    """The values of the tensors ``.backward()`` is called on, in order."""
    seen = []
    backward = torch.Tensor.backward

    def recording_backward(self, *args, **kwargs):
        seen.append(float(self.detach()))
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", recording_backward)
    return seen
