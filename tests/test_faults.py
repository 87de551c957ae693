"""Faults that end in one line and exit status 2 (``utils.cli.run_main``): a ModelNet shape file
with too few rows, a config that is not UTF-8, an input error raised in a DataLoader worker
process, a disk that fills up during a checkpoint save; and the removal of the temporary files a
killed save leaves. See docs/reliability.md."""
from __future__ import annotations

import os
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.common import DatasetFormatError
from utils import checkpoint as ckpt_mod
from utils.checkpoint import CheckpointWriteError, atomic_save, atomic_write, remove_orphan_temporaries
from utils.cli import InputError, input_error_classes, run_main, unwrap_worker_error
from utils.config import ConfigError, cfg_from_yaml_file
from writers import modelnet_cfg, write_modelnet


def one_line_exit(capsys, fn, prog="cmd.py"):
    """Run ``fn`` as a command's main: (exit status, the last stderr line, all of stderr). (In one
    pytest process, loggers of earlier tests may add "--- Logging error ---" blocks to stderr: the
    checks look for the error's own traceback, ``<module>.<Class>: ...``, not for "Traceback".)"""
    with pytest.raises(SystemExit) as exit_info:
        run_main(fn, prog=prog)
    err = capsys.readouterr().err
    return exit_info.value.code, err.strip().splitlines()[-1], err


# --------------------------------------------------------------------------- ModelNet rows
def test_modelnet_shape_with_too_few_rows_names_the_file_and_the_counts(tmp_path, capsys):
    from datasets.ModelNetDataset import ModelNet

    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 2),), n_rows=50)
    code, line, err = one_line_exit(capsys, lambda: ModelNet(modelnet_cfg(tmp_path / "mn", "train", 96)))
    assert code == 2 and line.startswith("cmd.py: error: ModelNet shape file '") and "DatasetFormatError: " not in err
    assert ".txt' has 50 rows" in line and "fewer than the 96 points per shape" in line and str(tmp_path / "mn") in line
    assert not list((tmp_path / "mn").glob("*.dat"))  # no cache written


# --------------------------------------------------------------------------- config encoding
def test_a_config_that_is_not_utf8_names_the_file_and_the_byte_offset(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("npoints: 1024\n# caf\u00e9 written in Latin-1\n".encode("latin-1"))
    code, line, _ = one_line_exit(capsys, lambda: cfg_from_yaml_file(path))
    assert code == 2 and line.endswith("[ConfigError]") and str(path) in line
    assert "not UTF-8" in line and "byte 0xe9 at byte offset 19 (line 2)" in line
    utf8 = tmp_path / "utf8.yaml"  # with a byte-order mark, too
    utf8.write_bytes("\ufeffnpoints: 1024\n# caf\u00e9\n".encode("utf-8"))
    assert cfg_from_yaml_file(utf8).npoints == 1024


def test_a_yaml_error_still_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {NAME: [\n")
    with pytest.raises(ConfigError, match=f'in "{path}", line'):
        cfg_from_yaml_file(path)


# --------------------------------------------------------------------------- DataLoader workers
class NeedsTwoArguments(InputError):
    """An input error torch cannot rebuild from the worker's message (it then raises a RuntimeError)."""

    def __init__(self, what: str, where: str):
        super().__init__(f"{what} in {where}")


class BrokenFiles(Dataset):
    def __init__(self, error: str):
        self.error = error

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if self.error == "format":
            raise DatasetFormatError(f"shape file 'data/s{index}.txt': expected 6 columns, got 4")
        raise NeedsTwoArguments("a broken shape", f"data/s{index}.txt")


@pytest.mark.parametrize("error", ["format", "two_arguments"])
def test_an_input_error_in_a_loader_worker_is_one_line(error, capsys):
    loader = DataLoader(BrokenFiles(error), batch_size=2, num_workers=1)
    code, line, err = one_line_exit(capsys, lambda: list(loader), prog="main.py")
    if error == "format":
        assert line == "main.py: error: shape file 'data/s0.txt': expected 6 columns, got 4 [DatasetFormatError]"
    else:
        assert line == "main.py: error: a broken shape in data/s0.txt [NeedsTwoArguments]"
    assert code == 2 and "Caught" not in err and "Original Traceback" not in err and "Error: " not in err


def test_a_bug_in_a_loader_worker_keeps_its_traceback():
    class Buggy(BrokenFiles):
        def __getitem__(self, index):
            raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError, match="Caught ZeroDivisionError in DataLoader worker process 0"):
        run_main(lambda: list(DataLoader(Buggy("x"), num_workers=1)))


def test_every_input_error_from_a_worker_is_one_line():
    """torch re-raises a worker's exception as ``type(message)``, or as a RuntimeError when that
    fails: every InputError of the project comes out as its original message either way."""
    import datasets.ShapeNetPartDataset  # noqa: F401  (define their errors)
    import engine.features  # noqa: F401
    import utils.rundir  # noqa: F401

    classes = {name: cls for name, cls in input_error_classes().items() if cls.__module__.split(".")[0] in
               ("utils", "datasets", "engine", "models", "extensions")}
    ours = {"ConfigError", "CheckpointError", "CheckpointWriteError", "UntrustedCheckpointError", "DatasetFormatError",
            "RunDirError", "PointCloudFileError", "ShapeNetPartFormatError"}
    assert ours <= set(classes)
    for name, cls in classes.items():
        worker_text = (f"Caught {name} in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                       f'  File "x.py", line 1, in f\n{cls.__module__}.{cls.__qualname__}: one message\n')
        try:
            rebuilt = cls(worker_text)  # what torch does
        except TypeError:  # a class with more arguments (torch then raises a RuntimeError)
            assert name not in ours, name
            rebuilt = RuntimeError(worker_text)
        else:
            assert str(cls("one message")) == "one message", name
        assert unwrap_worker_error(rebuilt) == (name, "one message"), name


# --------------------------------------------------------------------------- disk full
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
Usage = namedtuple("Usage", "total used free")


def fail_like_torch(f):
    f.write(b"x" * 1000)
    raise RuntimeError(TORCH_FULL + "\nframe #0: c10::ThrowEnforceNotMet(...)")


@pytest.mark.parametrize("free,why", [(0, "no space left on device (0.0 MiB free in"),
                                      (10 ** 12, "unexpected pos 704 vs 598")])
def test_a_full_disk_during_torch_save_is_a_checkpoint_write_error(tmp_path, monkeypatch, capsys, free, why):
    path = tmp_path / "ckpt-last.pth"
    atomic_save({"epoch": 1}, str(path))
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda folder: Usage(10 ** 12, 10 ** 12 - free, free))
    with pytest.raises(CheckpointWriteError) as err:
        atomic_write(str(path), fail_like_torch)
    message = str(err.value)
    assert isinstance(err.value, OSError) and isinstance(err.value.__cause__, RuntimeError)
    assert message.startswith(f"writing {path} failed: ") and why in message and "\n" not in message
    assert message.endswith(f"the previous checkpoint at {path} is intact")
    assert torch.load(path)["epoch"] == 1 and os.listdir(tmp_path) == ["ckpt-last.pth"]  # temporary file removed
    code, line, _ = one_line_exit(capsys, lambda: atomic_write(str(path), fail_like_torch))
    assert code == 2 and line.endswith("[CheckpointWriteError]")


def test_other_runtime_errors_while_saving_are_not_disguised(tmp_path):
    def bug(f):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access") as err:
        atomic_write(str(tmp_path / "x.pth"), bug)
    assert not isinstance(err.value, CheckpointWriteError) and os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- orphan temporaries
def test_orphan_temporaries_of_a_killed_save_are_removed(tmp_path, capsys):
    def temporary(name: str, age_s: float) -> Path:
        fd, path = tempfile.mkstemp(prefix=ckpt_mod.TMP_PREFIX + name, dir=tmp_path)  # as atomic_write names them
        os.close(fd)
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return Path(path)

    old = [temporary("ckpt-last.pth", 3600), temporary("ckpt-epoch-003.pth", 600)]
    writing = temporary("ckpt-best.pth", 1)  # a save in progress
    keep = [tmp_path / "ckpt-last.pth", tmp_path / ".tmp-notes", tmp_path / "config.yaml"]
    for p in keep:
        p.write_text("x")
        os.utime(p, (1, 1))
    removed = remove_orphan_temporaries(str(tmp_path))
    assert sorted(removed) == sorted(str(p) for p in old)
    assert writing.exists() and all(p.exists() for p in keep) and not any(p.exists() for p in old)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "Removed 2 temporary file(s) left by an interrupted save" in lines[0]
    assert remove_orphan_temporaries(str(tmp_path)) == [] and capsys.readouterr().out == ""
    assert remove_orphan_temporaries(str(tmp_path / "missing")) == []
