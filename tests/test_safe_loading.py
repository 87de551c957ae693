"""Safe loading of data files: the released pickle formats (ModelNet ``.dat`` caches, few-shot
``.pkl`` splits) run no code and still load as released; declared sizes (``.npz`` members, HDF5
datasets, a checkpoint's config) are checked before anything is allocated; meshes follow no
reference and FIFOs are never opened; a crashed scan worker is one line; a stop signal before the
first training step, and a second one at any time, stops the run at once. See docs/security.md and docs/SAFE_LOADING.md."""
from __future__ import annotations

import base64
import json
import os
import zipfile
import pickle
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from easydict import EasyDict

from conftest import REPO
from writers import CLASSES40, SYSTEM, RunsCode, write_tiny_pretrain_config



def command(*argv: str, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def error_lines(stderr: str) -> list:
    return [ln for ln in stderr.splitlines() if ": error: " in ln]

# One process runs every command below (and the memory measurements, first, while its peak is low):
# one torch import instead of one per command. Each job: ("measure", "module:function", path) ->
# outcome, seconds, peak memory growth (MiB); ("command", script, argv) -> exit status and the
# command's stderr lines.
DRIVER = """
import contextlib, importlib, io, json, resource, runpy, sys, time
sys.path.insert(0, sys.argv[1])
from utils.cli import InputError
results = []
for kind, target, args in json.loads(open(sys.argv[2]).read()):
    if kind == "measure":
        module, function = target.split(":")
        read = getattr(importlib.import_module(module), function)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            read(*args)
            outcome = "LOADED"
        except InputError as e:
            outcome = "REFUSED " + type(e).__name__ + " " + str(e).replace(chr(10), " | ")
        results.append({"outcome": outcome, "seconds": time.perf_counter() - start,
                        "growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024})
        continue
    err = io.StringIO()
    sys.argv = [target, *args]
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(target, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:
            code, _ = -1, print(type(e).__name__, e, file=err)
    results.append({"rc": code, "stderr": err.getvalue()})
print("RESULTS " + json.dumps(results))
"""


def run_jobs(jobs: list, folder: Path, timeout: float = 400) -> list:
    spec = folder / "jobs.json"
    spec.write_text(json.dumps(jobs))
    proc = command("-c", DRIVER, str(REPO), str(spec), timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert line is not None, proc.stderr[-3000:]
    return json.loads(line[len("RESULTS "):])


# ------------------------------------------------------------------- the commands, on hostile files
def write_hostile_inputs(tmp: Path) -> list:
    """Every hostile input of this file, and the jobs that read them (see :data:`DRIVER`)."""
    marker = tmp / "ran"
    data = tmp / "data"
    dat = data / "ModelNet" / "modelnet40_normal_resampled" / "modelnet40_train_8192pts_fps.dat"
    pkl = data / "ModelNetFewshot" / "5way_10shot" / "0.pkl"
    for path, payload in ((dat, [[np.zeros((8192, 6), np.float32), RunsCode(marker)], [np.array([0], np.int32)] * 2]),
                          (pkl, {"train": [(np.zeros((8192, 6), np.float32), 0, RunsCode(marker))], "test": []})):
        path.parent.mkdir(parents=True)
        path.write_bytes(pickle.dumps(payload))
    run = ["--scratch_model", "--data_root", str(data), "--exp_name", "x", "--experiment_root", str(tmp / "exp"),
           "--num_workers", "0", "--device", "cpu", "--no_progress"]

    bomb = tmp / "bomb.npz"
    bomb.write_bytes(base64.b64decode(BZIP2_BOMB))
    deflated = tmp / "deflate.npz"  # 2 million x 3 zeros, deflate: ~47 KB declaring 46 MiB
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z, z.open("points.npy", "w") as m:
        np.lib.format.write_array_header_1_0(m, {"descr": "<f8", "fortran_order": False, "shape": (2_000_000, 3)})
        m.write(bytes(2_000_000 * 24))
    fine = tmp / "fine.npz"  # an ordinary compressed cloud
    np.savez_compressed(fine, points=np.random.default_rng(0).normal(size=(5000, 3)))
    empty_h5 = tmp / "training_objectdataset.h5"
    with h5py.File(empty_h5, "w") as f:
        f.create_dataset("data", shape=(40000, 2048, 3), dtype="f4")  # nothing written: 0 bytes stored
        f.create_dataset("label", data=np.zeros(40000, np.int64))

    scan = data / "ScanObjectNN" / "main_split"
    scan.mkdir(parents=True)
    os.mkfifo(scan / "pipe")  # opening it for reading blocks until a writer comes: forever
    for name in ("training_objectdataset.h5", "test_objectdataset.h5"):
        with h5py.File(scan / name, "w") as f:
            f.create_dataset("data", shape=(4, 2048, 3), dtype="f4", external=[(str(scan / "pipe"), 0, 4 * 2048 * 12)])
            f.create_dataset("label", data=np.zeros(4, np.int64))

    objs = tmp / "objs"
    objs.mkdir()
    os.mkfifo(objs / ".mat.mtl")  # a dot-file: skipped by the folder scan, but named by the OBJ
    verts = np.random.default_rng(0).normal(size=(60, 3))
    (objs / "shape.obj").write_text("mtllib .mat.mtl\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in verts)
                                    + "usemtl m\n" + "".join(f"f {i} {i + 1} {i + 2}\n" for i in range(1, 58)))
    cloud = tmp / "a.xyz"
    np.savetxt(cloud, np.random.default_rng(0).normal(size=(200, 3)))
    predict = ["--device", "cpu", "--no_progress"]
    jobs = [("measure", "datasets.io:read_point_file", [str(bomb)]),
            ("measure", "datasets.io:read_point_file", [str(deflated)]),
            ("measure", "datasets.io:read_point_file", [str(fine)]),
            ("measure", "datasets.ScanObjectNNDataset:read_h5", [str(empty_h5)]),
            ("command", "main.py", ["--config", "cfgs/finetune_modelnet.yaml", *run]),
            ("command", "main.py", ["--config", "cfgs/fewshot.yaml", "--way", "5", "--shot", "10", "--fold", "0", *run]),
            ("command", "main.py", ["--config", "cfgs/finetune_scan_objbg.yaml", *run]),
            ("command", "tools/predict.py", ["--ckpts", str(tiny_classifier_checkpoint(tmp / "ok.pth")), "--input",
                                             str(objs), "--out", str(tmp / "objs.csv"), *predict])]
    for i, change in enumerate(LIMIT_CHANGES):
        ckpt = tiny_classifier_checkpoint(tmp / f"limit{i}.pth", **change)
        jobs.append(("command", "tools/predict.py", ["--ckpts", str(ckpt), "--input", str(cloud), "--out",
                                                     str(tmp / f"limit{i}.csv"), *predict]))
    return jobs


LIMIT_CHANGES = (dict(trans_dim=16384), dict(N_POINTS=2_000_000_000), dict(depth=10 ** 6))
NAMES = ("bzip2_bomb", "deflate_bomb", "fine_npz", "empty_h5", "evil_dat", "evil_pkl", "external_h5", "obj_fifo",
         "trans_dim", "n_points", "depth")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    """{job name: result} of :func:`write_hostile_inputs`'s jobs, run in one process."""
    tmp = tmp_path_factory.mktemp("hostile")
    results = run_jobs(write_hostile_inputs(tmp), tmp)
    return dict(zip(NAMES, results), tmp=tmp)


def assert_one_line(result: dict, *words: str) -> str:
    assert result["rc"] == 2, result["stderr"][-2000:]
    lines = error_lines(result["stderr"])
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"][-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------- 1. pickles run nothing
@pytest.mark.parametrize("job,path", [("evil_dat", "ModelNet/modelnet40_normal_resampled/modelnet40_train_8192pts_fps.dat"),
                                      ("evil_pkl", "ModelNetFewshot/5way_10shot/0.pkl")])
def test_a_data_pickle_that_would_run_code_is_refused_by_main(hostile, job, path):
    """main.py --config cfgs/finetune_modelnet.yaml / cfgs/fewshot.yaml --scratch_model --data_root DIR."""
    assert not (hostile["tmp"] / "ran").exists(), "a pickle ran its code"
    assert_one_line(hostile[job], str(hostile["tmp"] / "data" / path), SYSTEM)


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


def test_convert_pickles_writes_npz_that_the_loaders_read_instead(tmp_path, monkeypatch):
    from datasets.modelnet_cache import load_cache
    from datasets.ModelNetDatasetFewShot import ModelNetFewShot

    dat = tmp_path / "modelnet40_train_32pts_fps.dat"
    points, labels = released_cache(dat)
    fs = tmp_path / "fs" / "5way_10shot"
    fs.mkdir(parents=True)
    split = {s: [(points[i], i % 5, labels[i]) for i in range(5)] for s in ("train", "test")}
    with open(fs / "0.pkl", "wb") as f:
        pickle.dump(split, f)
    monkeypatch.setattr(sys, "argv", ["tools/convert_pickles.py", str(dat), str(tmp_path / "fs")])
    runpy.run_path(str(REPO / "tools" / "convert_pickles.py"), run_name="__main__")  # the command, in this process
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


def test_npz_bombs_are_refused_quickly_in_little_memory(hostile):
    with zipfile.ZipFile(hostile["tmp"] / "bomb.npz") as z:  # what it is: under 1 KB, declaring 915 MiB
        assert z.getinfo("points.npy").file_size > 900 * 2 ** 20 and os.path.getsize(hostile["tmp"] / "bomb.npz") < 1000
    for job in ("bzip2_bomb", "deflate_bomb"):
        result = hostile[job]
        assert result["outcome"].startswith("REFUSED BadFileError") and ".npz" in result["outcome"], result
        assert result["seconds"] < 3 and result["growth_mb"] < 40, result
    assert hostile["fine_npz"]["outcome"] == "LOADED", hostile["fine_npz"]


def test_hdf5_declaring_much_and_storing_nothing_is_refused(hostile):
    result = hostile["empty_h5"]
    assert result["outcome"].startswith("REFUSED DatasetFormatError") and "'data'" in result["outcome"], result
    assert "INTERMAE_MAX_EXPANSION" in result["outcome"] and result["growth_mb"] < 40, result


def test_hdf5_with_external_storage_is_refused_through_main_without_hanging(hostile):
    assert_one_line(hostile["external_h5"], "external files", "training_objectdataset.h5")


def test_predict_on_an_obj_whose_mtllib_names_a_fifo_does_not_hang(hostile):
    assert hostile["obj_fifo"]["rc"] == 0, hostile["obj_fifo"]["stderr"][-2000:]
    assert "shape.obj" in (hostile["tmp"] / "objs.csv").read_text()


@pytest.mark.parametrize("job,word", [("trans_dim", "INTERMAE_MAX_MODEL_PARAMS"), ("n_points", "N_POINTS"),
                                      ("depth", "depth")])
def test_predict_refuses_a_checkpoint_config_beyond_the_limits_before_building(hostile, job, word):
    """A 3 KB classifier checkpoint whose config says trans_dim 16384, N_POINTS 2e9 or depth 1e6."""
    i = NAMES.index(job) - NAMES.index("trans_dim")
    assert_one_line(hostile[job], str(hostile["tmp"] / f"limit{i}.pth"), word)


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
original_forward = Inter_MAE.forward
def forward(self, *args, **kwargs):
    if self.training:  # two SIGTERMs in the first training step: the first waits for the step, the second not
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    return original_forward(self, *args, **kwargs)
Inter_MAE.forward = forward
run_main(lambda: main.main(["--config", {cfg!r}, "--exp_name", "run", "--num_workers", "0", "--device", "cpu",
                             "--experiment_root", {exp!r}, "--no_progress"]))
"""


def test_sigterm_at_start_up_stops_at_once_and_releases_the_lock(tmp_path, shapenet55_root, monkeypatch, capfd):
    """SIGTERM while the model is being built (a long start-up step): the run stops there, exit 143."""
    import main as main_module
    from models.Inter_MAE import Inter_MAE
    from utils.cli import run_main

    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    original = Inter_MAE.__init__

    def init(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the rest of a long start-up: the signal must not wait for it
        original(self, *args, **kwargs)

    monkeypatch.setattr(Inter_MAE, "__init__", init)
    start = time.time()
    with pytest.raises(SystemExit) as stopped:
        run_main(lambda: main_module.main(["--config", str(cfg), "--exp_name", "run", "--num_workers", "0", "--device",
                                           "cpu", "--experiment_root", str(tmp_path / "exp"), "--no_progress"]))
    assert stopped.value.code == 143 and time.time() - start < 4
    assert "stopped by SIGTERM at once" in capfd.readouterr().err
    run = tmp_path / "exp" / "tiny" / "run"
    assert run.is_dir() and not (run / ".lock").exists() and not list(run.glob("ckpt-*.pth"))


def test_a_second_sigterm_during_training_stops_at_once_and_releases_the_lock(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    driver = STOP_DRIVER.format(repo=str(REPO), cfg=str(cfg), exp=str(tmp_path / "exp"))
    start = time.time()
    proc = command("-c", driver, timeout=120)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "a second stop signal" in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - start < 60
    assert not (tmp_path / "exp" / "tiny" / "run" / ".lock").exists()


# ------------------------------------------------------------------ every checkpoint, one reader
def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"base_model": {"w": torch.zeros(2)}, "epoch": 1, "metrics": {}, "hook": RunsCode(marker)}, path)
    return path


def test_image_encoder_weights_are_read_by_the_one_checkpoint_reader(tmp_path):
    from models.image_encoder import ImageBranch
    from utils.checkpoint import UntrustedCheckpointError

    evil = evil_checkpoint(tmp_path / "vit.pth", tmp_path / "ran")
    with pytest.raises(UntrustedCheckpointError) as e:
        ImageBranch(model="vit_tiny_patch16_224", model_kwargs=dict(img_size=32, depth=1, embed_dim=48, num_heads=2),
                    pretrained=str(evil))
    assert str(evil) in str(e.value) and SYSTEM in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "ran").exists()


@pytest.mark.filterwarnings("ignore:'demo.report' found in sys.modules")  # imported above for SOURCES
def test_the_demo_report_refuses_a_checkpoint_in_one_line(tmp_path, monkeypatch, capfd):
    """python -m demo.report --root DIR, DIR's pre-training checkpoint crafted to run code."""
    from demo.report import SOURCES

    ckpt = tmp_path / SOURCES["pretrain"]
    ckpt.parent.mkdir(parents=True)
    evil_checkpoint(ckpt, tmp_path / "ran")
    monkeypatch.setattr(sys, "argv", ["demo/report.py", "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("demo.report", run_name="__main__", alter_sys=True)
    err = capfd.readouterr().err
    assert e.value.code == 2 and len(error_lines(err)) == 1 and str(ckpt) in err and SYSTEM in err, err
    assert not (tmp_path / "ran").exists()
