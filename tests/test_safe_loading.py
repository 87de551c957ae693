"""Safe loading of data files: the released pickle formats (ModelNet ``.dat`` caches, few-shot
``.pkl`` splits) run no code and still load as released; declared sizes (``.npz`` members, HDF5
datasets, a checkpoint's config) are checked before anything is allocated; meshes follow no
reference and FIFOs are never opened; a crashed scan worker is one line; a stop signal before the
first training step, and a second one at any time, stops the run at once. See README "Safe loading"."""
from __future__ import annotations

import base64
import os
import pickle
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from easydict import EasyDict

from conftest import REPO
from writers import CLASSES40, write_tiny_pretrain_config

SYSTEM = f"{os.system.__module__}.system"  # posix.system: how a pickle names os.system


class RunsCode:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def command(*argv: str, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def error_lines(proc: subprocess.CompletedProcess) -> list:
    return [ln for ln in proc.stderr.splitlines() if ": error: " in ln]


# ------------------------------------------------------------------------- 1. pickles run nothing
@pytest.mark.parametrize("kind", ["modelnet_cache", "fewshot_pkl"])
def test_a_data_pickle_that_would_run_code_is_refused_by_main(tmp_path, kind):
    marker = tmp_path / "ran"
    if kind == "modelnet_cache":
        path = tmp_path / "data" / "ModelNet" / "modelnet40_normal_resampled" / "modelnet40_train_8192pts_fps.dat"
        payload = [[np.zeros((8192, 6), np.float32), RunsCode(marker)], [np.array([0], np.int32)] * 2]
        argv = ["--config", "cfgs/finetune_modelnet.yaml"]
    else:
        path = tmp_path / "data" / "ModelNetFewshot" / "5way_10shot" / "0.pkl"
        payload = {"train": [(np.zeros((8192, 6), np.float32), 0, RunsCode(marker))], "test": []}
        argv = ["--config", "cfgs/fewshot.yaml", "--way", "5", "--shot", "10", "--fold", "0"]
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    proc = command("main.py", *argv, "--scratch_model", "--data_root", str(tmp_path / "data"), "--exp_name", "x",
                   "--experiment_root", str(tmp_path / "exp"), "--num_workers", "0", "--device", "cpu")
    assert not marker.exists(), "the pickle ran its code"
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and str(path) in lines[0] and SYSTEM in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def released_cache(path: Path, n_shapes: int = 5, n_points: int = 32, protocol=None):
    """A ``.dat`` as the released ModelNetDataset writes it: pickle.dump([points, labels]) of float32
    (N, 6) arrays and int32 (1,) labels."""
    rng = np.random.default_rng(0)
    points = [rng.normal(size=(n_points, 6)).astype(np.float32) for _ in range(n_shapes)]
    labels = [np.array([3 * i % 40]).astype(np.int32) for i in range(n_shapes)]
    with open(path, "wb") as f:
        pickle.dump([points, labels], f, protocol=protocol)
    return points, labels


@pytest.mark.parametrize("protocol", [2, 4, 5])  # 2: Python 2 / NumPy 1 era files; 4: default; 5: Python 3.14's
def test_released_cache_and_fewshot_files_load_with_the_same_numbers(tmp_path, protocol):
    from datasets.ModelNetDataset import ModelNet
    from datasets.ModelNetDatasetFewShot import ModelNetFewShot

    root = tmp_path / "mn"
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES40) + "\n")
    points, labels = released_cache(root / "modelnet40_test_32pts_fps.dat", protocol=protocol)
    ds = ModelNet(EasyDict(DATA_PATH=str(root), N_POINTS=32, NUM_CATEGORY=40, USE_NORMALS=True, subset="test"))
    for got, want in zip(ds.list_of_points, points):
        np.testing.assert_array_equal(got, want)
    assert [int(np.asarray(x).reshape(-1)[0]) for x in ds.list_of_labels] == [int(x[0]) for x in labels]

    fs = tmp_path / "fs" / "5way_10shot"
    fs.mkdir(parents=True)
    split = {s: [(points[i], i % 5, labels[i]) for i in range(5)] for s in ("train", "test")}
    with open(fs / "3.pkl", "wb") as f:
        pickle.dump(split, f, protocol=protocol)
    cfg = dict(DATA_PATH=str(tmp_path / "fs"), N_POINTS=32, NUM_CATEGORY=40, USE_NORMALS=True, way=5, shot=10, fold=3)
    few = ModelNetFewShot(EasyDict(cfg, subset="test"))
    for (got, label, _), (want, want_label, _) in zip(few.dataset, split["test"]):
        np.testing.assert_array_equal(got, want)
        assert label == want_label


def test_convert_pickles_writes_npz_that_the_loaders_read_instead(tmp_path):
    from datasets.modelnet_cache import load_cache
    from datasets.ModelNetDatasetFewShot import ModelNetFewShot

    dat = tmp_path / "modelnet40_train_32pts_fps.dat"
    points, labels = released_cache(dat)
    fs = tmp_path / "fs" / "5way_10shot"
    fs.mkdir(parents=True)
    split = {s: [(points[i], i % 5, labels[i]) for i in range(5)] for s in ("train", "test")}
    with open(fs / "0.pkl", "wb") as f:
        pickle.dump(split, f)
    proc = command("tools/convert_pickles.py", str(dat), str(tmp_path / "fs"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "modelnet40_train_32pts_fps.npz").is_file() and (fs / "0.npz").is_file()
    with np.load(tmp_path / "modelnet40_train_32pts_fps.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["points"], np.stack(points))
        np.testing.assert_array_equal(z["labels"], np.stack(labels))
    dat.write_bytes(b"not a pickle")  # the .npz beside it is read, not the pickle
    (fs / "0.pkl").write_bytes(b"not a pickle")
    got, got_labels = load_cache(str(dat), 32)
    np.testing.assert_array_equal(np.stack(got), np.stack(points))
    assert [int(x[0]) for x in got_labels] == [int(x[0]) for x in labels]
    few = ModelNetFewShot(EasyDict(DATA_PATH=str(tmp_path / "fs"), N_POINTS=32, NUM_CATEGORY=40, USE_NORMALS=True,
                                   way=5, shot=10, fold=0, subset="train"))
    np.testing.assert_array_equal(np.stack([it[0] for it in few.dataset]), np.stack(points))
    assert [it[1] for it in few.dataset] == [i % 5 for i in range(5)]


@pytest.mark.parametrize("payload,word", [
    ([[np.array(["a"], dtype=object)], [np.array([0], np.int32)]], "dtype('O')"),
    ([[np.array(["abc"])], [np.array([0], np.int32)]], "<U3"),
    ([[{1, 2}.__class__], [0]], "builtins.set"),
])
def test_non_numeric_arrays_and_classes_are_refused_naming_them(tmp_path, payload, word):
    from datasets.common import DatasetFormatError
    from datasets.modelnet_cache import load_cache

    path = tmp_path / "x.dat"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(DatasetFormatError) as e:
        load_cache(str(path), 1)
    assert str(path) in str(e.value) and word in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------ 2. bounded allocation
# A 40 million x 3 float64 .npz member of zeros compressed with bzip2: 928 bytes declaring 915 MiB.
BZIP2_BOMB = (
    "UEsDBC4AAAAMAAAAIQC74usf//////////8KABQAcG9pbnRzLm5weQEAEACAcDg5AAAAABYDAAAAAAAAQlpoOTFBWSZTWf/nwPUFfkHfoOgQQO"
    "TMVAEDQiCvRd0KCAAACCAAlAymlPUA9QfqmTEwgfqPSCKqYQwQGAAQBD+BQBVUSARQBVUSH3AigCSSQRZOb8QvUQREgrZQk8DUslqlM1pX83gR"
    "wpfhi2S/3Tk8cx+2RYN3TO2lAlOE2FjoQSAASSSCNTFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACC"
    "AAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZ"
    "Dgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATU"
    "ZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8B"
    "X45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQ"
    "qAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADA"
    "AAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQV"
    "kmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZuz6F/gFB1sACwAAAAgAI"
    "IAAgpTQZjSkqBNhUlQJ4u5IpwoSFJgM7EFBLAQIuAy4AAAAMAAAAIQC74usfFgMAAIBwODkKAAAAAAAAAAAAAACAAQAAAABwb2ludHMubnB5UE"
    "sFBgAAAAABAAEAOAAAAFIDAAAAAA=="
)

MEASURE = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from utils.cli import InputError
from {module} import {function} as read
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    read({path!r})
    print("LOADED")
except InputError as e:
    print("REFUSED", type(e).__name__, str(e).replace(chr(10), " | "))
print("SECONDS", time.perf_counter() - start)
print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def measured(module: str, function: str, path: Path) -> dict:
    """Read ``path`` with ``module.function`` in a fresh process: its outcome, seconds, and peak
    memory growth (MiB) during the call."""
    proc = command("-c", MEASURE.format(repo=str(REPO), module=module, function=function, path=str(path)), timeout=120)
    out = {}
    for line in proc.stdout.splitlines():
        key, _, rest = line.partition(" ")
        out[key] = rest
    assert "SECONDS" in out, proc.stderr[-2000:]
    return out


def test_npz_bombs_are_refused_quickly_in_little_memory(tmp_path):
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(base64.b64decode(BZIP2_BOMB))
    import zipfile

    with zipfile.ZipFile(bomb) as z:
        info = z.getinfo("points.npy")
        assert info.file_size > 900 * 2 ** 20 and os.path.getsize(bomb) < 1000  # what it is: tiny, declaring 915 MiB
    deflated = tmp_path / "deflate.npz"  # 2 million x 3 zeros, deflate: ~47 KB declaring 46 MiB
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z, z.open("points.npy", "w") as m:
        np.lib.format.write_array_header_1_0(m, {"descr": "<f8", "fortran_order": False, "shape": (2_000_000, 3)})
        m.write(bytes(2_000_000 * 24))
    for path in (bomb, deflated):
        out = measured("datasets.io", "read_point_file", path)
        assert out.get("REFUSED", "").startswith("BadFileError") and str(path) in out["REFUSED"], out
        assert float(out["SECONDS"]) < 3 and float(out["GROWTH_MB"]) < 40, out
    fine = tmp_path / "fine.npz"  # an ordinary compressed cloud still loads
    np.savez_compressed(fine, points=np.random.default_rng(0).normal(size=(5000, 3)))
    assert "LOADED" in measured("datasets.io", "read_point_file", fine)


def test_hdf5_declaring_much_and_storing_nothing_is_refused(tmp_path):
    path = tmp_path / "training_objectdataset.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(40000, 2048, 3), dtype="f4")  # nothing written: 0 bytes stored
        f.create_dataset("label", data=np.zeros(40000, np.int64))
    out = measured("datasets.ScanObjectNNDataset", "read_h5", path)
    assert out.get("REFUSED", "").startswith("DatasetFormatError") and "'data'" in out["REFUSED"], out
    assert "INTERMAE_MAX_EXPANSION" in out["REFUSED"] and float(out["GROWTH_MB"]) < 40, out


def test_hdf5_with_external_storage_is_refused_through_main_without_hanging(tmp_path):
    folder = tmp_path / "data" / "ScanObjectNN" / "main_split"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "pipe")  # opening it for reading would block forever
    for name in ("training_objectdataset.h5", "test_objectdataset.h5"):
        with h5py.File(folder / name, "w") as f:
            f.create_dataset("data", shape=(4, 2048, 3), dtype="f4", external=[(str(folder / "pipe"), 0, 4 * 2048 * 12)])
            f.create_dataset("label", data=np.zeros(4, np.int64))
    proc = command("main.py", "--config", "cfgs/finetune_scan_objbg.yaml", "--scratch_model", "--data_root",
                   str(tmp_path / "data"), "--exp_name", "x", "--experiment_root", str(tmp_path / "exp"),
                   "--num_workers", "0", "--device", "cpu", timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and "external files" in lines[0] and "training_objectdataset.h5" in lines[0], proc.stderr


def tiny_classifier_checkpoint(path: Path, **changes) -> Path:
    """A fine-tuned classifier's checkpoint (write_checkpoint), its embedded config changed by ``changes``
    (``model.trans_dim=...``, ``N_POINTS=...``) while the weights keep their sizes."""
    from models import build_model_from_cfg
    from utils.checkpoint import write_checkpoint

    model_cfg = dict(NAME="PointTransformer", trans_dim=32, depth=2, drop_path_rate=0.1, cls_dim=3, num_heads=2,
                     group_size=8, num_group=8, encoder_dims=32, patch_embed="inter_mae")
    torch.manual_seed(0)
    model = build_model_from_cfg(EasyDict(model_cfg))
    data = {"NAME": "PointCloudFolder", "N_POINTS": 96, "labels": True}
    config = {"model": dict(model_cfg), "npoints": 64, "dataset": {"test": {"_base_": data, "others": {"subset": "test"}}}}
    for key, value in changes.items():
        if key == "N_POINTS":
            data["N_POINTS"] = value
        else:
            config["model"][key] = value
    write_checkpoint(str(path), model=model, epoch=1, config=config, class_names=["a", "b", "c"], job="finetune")
    return path


@pytest.mark.parametrize("change,word", [(dict(trans_dim=16384), "INTERMAE_MAX_MODEL_PARAMS"),
                                         (dict(N_POINTS=2_000_000_000), "N_POINTS"),
                                         (dict(depth=10 ** 6), "depth")])
def test_predict_refuses_a_checkpoint_config_beyond_the_limits_before_building(tmp_path, change, word):
    ckpt = tiny_classifier_checkpoint(tmp_path / "ckpt.pth", **change)
    cloud = tmp_path / "a.xyz"
    np.savetxt(cloud, np.random.default_rng(0).normal(size=(200, 3)))
    start = time.perf_counter()
    proc = command("tools/predict.py", "--ckpts", str(ckpt), "--input", str(cloud), "--out", str(tmp_path / "p.csv"),
                   "--device", "cpu", "--no_progress", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and str(ckpt) in lines[0] and word in lines[0], proc.stderr[-2000:]
    assert time.perf_counter() - start < 60


def test_predict_on_an_obj_whose_mtllib_names_a_fifo_does_not_hang(tmp_path):
    ckpt = tiny_classifier_checkpoint(tmp_path / "ckpt.pth")
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / ".mat.mtl")  # a dot-file: skipped by the folder scan, but named by the OBJ
    rng = np.random.default_rng(0)
    verts = rng.normal(size=(60, 3))
    faces = [(i, i + 1, i + 2) for i in range(1, 58)]
    (folder / "shape.obj").write_text("mtllib .mat.mtl\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in verts)
                                      + "usemtl m\n" + "".join(f"f {a} {b} {c}\n" for a, b, c in faces))
    proc = command("tools/predict.py", "--ckpts", str(ckpt), "--input", str(folder), "--out", str(tmp_path / "p.csv"),
                   "--device", "cpu", "--no_progress", timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shape.obj" in (tmp_path / "p.csv").read_text()


def test_a_killed_scan_worker_is_one_line_naming_its_file(tmp_path, monkeypatch):
    import datasets.PointCloudFolder as folder_module
    from datasets.common import DatasetFormatError

    root = tmp_path / "clouds"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(folder_module.PARALLEL_SCAN_MIN_FILES):
        np.savetxt(root / "a" / f"{i:03d}.xyz", rng.normal(size=(40, 3)))
    victim = str(root / "a" / "033.xyz")
    original = folder_module.load_cloud_file

    def reader(path, *args, **kwargs):  # what the kernel's OOM killer does to the worker reading this file
        if path == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(folder_module, "load_cloud_file", reader)
    monkeypatch.setattr(folder_module, "scan_workers", lambda n, cache: 2)
    folder_module._SCANS.clear()
    with pytest.raises(DatasetFormatError) as e:
        folder_module.FolderScan(str(root), True, str(tmp_path / "cache"), 32, progress=False)
    message = str(e.value)
    assert f"while reading {victim} " in message and "\n" not in message


# --------------------------------------------------------------------------------- signals
STOP_DRIVER = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
import main
from models.Inter_MAE import Inter_MAE
from utils.cli import run_main
where, count = {where!r}, {count}
if where == "build":
    original_init = Inter_MAE.__init__
    def init(self, *args, **kwargs):
        open({ready!r}, "w").close()
        time.sleep(30)  # a long start-up step: the signal must not wait for it
        original_init(self, *args, **kwargs)
    Inter_MAE.__init__ = init
else:
    original_forward = Inter_MAE.forward
    def forward(self, *args, **kwargs):
        if self.training:
            for _ in range(count):
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        return original_forward(self, *args, **kwargs)
    Inter_MAE.forward = forward
run_main(lambda: main.main(["--config", {cfg!r}, "--exp_name", "run", "--num_workers", "0", "--device", "cpu",
                             "--experiment_root", {exp!r}, "--no_progress"]))
"""


def test_sigterm_at_start_up_stops_at_once_and_releases_the_lock(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    ready = tmp_path / "building"
    driver = STOP_DRIVER.format(repo=str(REPO), where="build", count=0, ready=str(ready), cfg=str(cfg),
                                exp=str(tmp_path / "exp"))
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 90
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ready.exists(), proc.communicate()[1][-2000:]
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.time() - sent < 10, "the start-up went on after SIGTERM"
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM at once" in err and "Traceback" not in err
    assert not (tmp_path / "exp" / "tiny" / "run" / ".lock").exists()


def test_a_second_sigterm_during_training_stops_at_once_and_releases_the_lock(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    driver = STOP_DRIVER.format(repo=str(REPO), where="train", count=2, ready="", cfg=str(cfg),
                                exp=str(tmp_path / "exp"))
    start = time.time()
    proc = command("-c", textwrap.dedent(driver), timeout=120)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "a second stop signal" in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - start < 60
    assert not (tmp_path / "exp" / "tiny" / "run" / ".lock").exists()
