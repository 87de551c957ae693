"""Your own files as a dataset (datasets/PointCloudFolder.py, datasets/io.load_cloud_file): every
format (meshes written by trimesh), surface sampling, layouts and splits, the one-line list of bad
files, the cache, the split file of a run; pre-training on a folder through main.py."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

import datasets.PointCloudFolder as folder_module
from datasets import build_dataset_from_cfg
from datasets.common import DatasetFormatError
from datasets.io import BadFileError, load_cloud_file, write_ply
from datasets.PointCloudFolder import PARSE_COUNT, attach_split_files, stratified_split

trimesh = pytest.importorskip("trimesh")

N_POINTS = 96
# every supported format, in the order the shapes of a class cycle through them
FORMATS = ("off", "obj", "stl", "mesh.ply", "ply", "ascii.ply", "xyz", "txt", "pts", "csv", "npy", "npz")


def make_mesh(kind: str, rng: np.random.Generator):
    """Separable shapes: a ball, a flat plate, a long stick (randomly scaled a little)."""
    jitter = rng.uniform(0.85, 1.15, size=3)
    if kind == "ball":
        mesh = trimesh.creation.icosphere(subdivisions=2)
    elif kind == "plate":
        mesh = trimesh.creation.box(extents=(2.0, 0.15, 2.0))
    else:
        mesh = trimesh.creation.cylinder(radius=0.12, height=2.5, sections=12)
    mesh.apply_scale(jitter)
    return mesh


def write_shape(path: Path, fmt: str, mesh, rng: np.random.Generator, n_cloud: int = 300) -> Path:
    """``mesh`` as ``fmt``: meshes through trimesh; point formats from surface samples."""
    stem = path.with_suffix("")
    if fmt in ("off", "obj", "stl", "mesh.ply"):
        out = Path(f"{stem}.{fmt.split('.')[-1]}")
        mesh.export(str(out))
        return out
    pts = np.asarray(mesh.sample(n_cloud, seed=int(rng.integers(1 << 30))), dtype=np.float32)
    out = Path(f"{stem}.{fmt.split('.')[-1]}")
    if fmt == "ply":
        write_ply(str(out), pts, normals=np.ones_like(pts))
    elif fmt == "ascii.ply":
        write_ply(str(out), pts, binary=False)
    elif fmt == "xyz":
        np.savetxt(out, pts)
    elif fmt == "txt":  # a header line and extra columns, as some exporters write
        np.savetxt(out, np.c_[pts, np.ones((len(pts), 3))], header="x y z nx ny nz", comments="")
    elif fmt == "pts":
        np.savetxt(out, pts, fmt="%.5f", delimiter="\t")
    elif fmt == "csv":
        np.savetxt(out, np.c_[pts, np.zeros(len(pts))], delimiter=",", header="x,y,z,intensity", comments="")
    elif fmt == "npy":
        np.save(out, pts)
    elif fmt == "npz":
        np.savez(out, points=pts, colour=np.zeros((len(pts), 3)))
    return out


def write_folder(root: Path, per_class: int = 6, classes=("ball", "plate", "stick"), split_dirs=None,
                 seed: int = 0, names=("shape {i} é",)) -> Path:
    """One subfolder per class holding ``per_class`` shapes that cycle through every format (names
    with a space and a non-ASCII letter). ``split_dirs`` {'train': n, 'test': m}: train/ and test/."""
    rng = np.random.default_rng(seed)
    parts = split_dirs or {"": per_class}
    for part, n in parts.items():
        for c, kind in enumerate(classes):
            folder = root / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_shape(folder / names[0].format(i=i), FORMATS[(i + c) % len(FORMATS)], make_mesh(kind, rng), rng)
    return root


def folder_dataset(root, **others):
    base = EasyDict(NAME="PointCloudFolder", DATA_PATH=str(root), N_POINTS=N_POINTS)
    others.setdefault("subset", "train")
    return build_dataset_from_cfg(base, others)


@pytest.fixture(autouse=True)
def _fresh_scans():
    folder_module._SCANS.clear()
    yield
    folder_module._SCANS.clear()


# ------------------------------------------------------------------------------------ formats
def test_every_format_reads_to_n_points_deterministically(tmp_path):
    rng = np.random.default_rng(1)
    mesh = make_mesh("ball", rng)
    for fmt in FORMATS:
        path = write_shape(tmp_path / f"s_{fmt.replace('.', '_')}", fmt, mesh, rng)
        pts = load_cloud_file(str(path), N_POINTS, seed=0)
        assert pts.shape == (N_POINTS, 3) and pts.dtype == np.float32, fmt
        radius = np.linalg.norm(pts, axis=1) / mesh.scale  # all on (or near) the jittered sphere
        assert np.isfinite(pts).all() and radius.max() < 1.0, fmt
        np.testing.assert_array_equal(pts, load_cloud_file(str(path), N_POINTS, seed=0))  # seeded
        moved = tmp_path / "moved" / path.name  # the seed comes from the bytes, not the place
        moved.parent.mkdir(exist_ok=True)
        shutil.copy(path, moved)
        np.testing.assert_array_equal(pts, load_cloud_file(str(moved), N_POINTS, seed=0))
        if fmt in ("off", "stl"):
            assert not np.array_equal(pts, load_cloud_file(str(path), N_POINTS, seed=1))


def test_mesh_sampling_is_area_weighted_on_the_surface(tmp_path):
    mesh = trimesh.creation.box(extents=(1.0, 1.0, 4.0))  # 4 long faces of area 4, 2 ends of area 1
    mesh.export(str(tmp_path / "box.off"))
    pts = load_cloud_file(str(tmp_path / "box.off"), 6000, seed=0)
    on_end = np.isclose(np.abs(pts[:, 2]), 2.0, atol=1e-5)
    on_side = np.isclose(np.abs(pts[:, :2]), 0.5, atol=1e-5).any(axis=1)
    assert (on_end | on_side).all()  # on the surface
    assert on_end.mean() == pytest.approx(2 / 18, abs=0.02)  # share of the area, not of the 12 triangles


def test_text_files_with_header_commas_and_extra_columns(tmp_path):
    rows = np.arange(300 * 3, dtype=np.float64).reshape(300, 3) / 7
    (tmp_path / "a.csv").write_text("x,y,z,i\n" + "".join(f"{x},{y},{z},9\n" for x, y, z in rows))
    (tmp_path / "b.xyz").write_text("# exported\n\n" + "".join(f"{x} {y}  {z}\n" for x, y, z in rows))
    for name in ("a.csv", "b.xyz"):
        np.testing.assert_allclose(load_cloud_file(str(tmp_path / name), 300), rows.astype(np.float32), rtol=1e-6)


# ------------------------------------------------------------------------- layouts and splits
def test_labelled_folder_stratified_split_written_and_reused(tmp_path):
    root = write_folder(tmp_path / "data", per_class=5)
    split_file = tmp_path / "run" / "split.json"
    train = folder_dataset(root, labels=True, split_file=str(split_file), split_ratio=0.4)
    test = folder_dataset(root, subset="test", labels=True, split_file=str(split_file), split_ratio=0.4)
    assert train.class_names == ["ball", "plate", "stick"]
    split = json.loads(split_file.read_text())
    assert len(split["train"]) == 9 and len(split["test"]) == 6  # 2 of each class's 5 files to test
    assert sorted(train.files + test.files) == sorted(split["train"] + split["test"])
    assert not set(train.files) & set(test.files)
    for cls in train.class_names:
        assert sum(f.startswith(cls + "/") for f in test.files) == 2
    cls, rel, (points, label) = test[0]
    assert rel == test.files[0] and label == test.class_names.index(cls) == test.class_names.index(rel.split("/")[0])
    assert points.shape == (N_POINTS, 3) and points.dtype == torch.float32
    assert torch.linalg.norm(points, dim=1).max() == pytest.approx(1.0, abs=1e-5)  # unit sphere
    # the written split is read back, whatever the ratio / seed now say
    again = folder_dataset(root, subset="test", labels=True, split_file=str(split_file), split_ratio=0.2, split_seed=5)
    assert again.files == test.files
    # a seeded split: the same seed gives the same split, another seed another one
    items = [(f"c{i % 3}/f{i}", f"c{i % 3}") for i in range(30)]
    assert stratified_split(items, 0.2, 0) == stratified_split(items, 0.2, 0) != stratified_split(items, 0.2, 1)


def test_train_test_subfolders_and_unlabelled_tree(tmp_path):
    root = write_folder(tmp_path / "data", split_dirs={"train": 2, "test": 1})
    train = folder_dataset(root, labels=True)
    test = folder_dataset(root, subset="test", labels=True)
    assert len(train) == 6 and len(test) == 3 and all(f.startswith("test/") for f in test.files)
    assert train.class_names == test.class_names == ["ball", "plate", "stick"]
    np.random.seed(0)
    pre = folder_dataset(root, labels=False, npoints=64)  # any tree: train/ is the train subset
    _, rel, points = pre[0]
    assert len(pre) == 6 and points.shape == (64, 3) and rel.startswith("train/")


def test_missing_folder_says_to_pass_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetFormatError, match="--data_root DIR"):
        folder_dataset("data")


def test_attach_split_files_sets_only_folder_entries_without_one(tmp_path):
    cfg = EasyDict(dataset={
        "train": {"_base_": {"NAME": "PointCloudFolder"}, "others": {"subset": "train"}},
        "val": {"_base_": {"NAME": "PointCloudFolder"}, "others": {"subset": "test", "split_file": "/x.json"}},
        "extra": {"_base_": {"NAME": "ModelNet"}, "others": {"subset": "test"}}})
    assert attach_split_files(cfg, str(tmp_path)) == ["train"]
    assert cfg.dataset.train.others.split_file == str(tmp_path / "split.json")
    assert cfg.dataset.val.others.split_file == "/x.json" and "split_file" not in cfg.dataset.extra.others


# ---------------------------------------------------------------------------------- bad files
def listed_file(message: str) -> Path:
    """The full list a bad-file report names at its end."""
    assert "; every file and its reason: " in message
    return Path(message.rsplit("; every file and its reason: ", 1)[1])


def test_every_bad_file_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    root = write_folder(tmp_path / "data dir ü", per_class=2)
    (root / "ball" / "empty.ply").write_bytes(b"")
    (root / "ball" / "nan.txt").write_text("1 2 3\n4 nan 5\n" + "1 1 1\n" * 200)
    (root / "plate" / "small.xyz").write_text("1 2 3\n4 5 6\n")
    (root / "plate" / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "stick" / "notes.docx").write_text("hi")
    (root / "stick" / ".hidden.foo").write_text("skipped")  # hidden: not a file of the set
    with pytest.raises(DatasetFormatError) as info:
        folder_dataset(root)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"5 bad files in {root}: empty (1 file): ball/empty.ply; ")
    assert "; non-finite value at row 2 ('4 nan 5') (1 file): ball/nan.txt;" in msg
    assert f"; too small: 2 points, fewer than N_POINTS = {N_POINTS} (1 file): plate/small.xyz;" in msg
    assert "; unreadable (" in msg and "(1 file): plate/broken.npy;" in msg
    assert "; unknown extension .docx; expected one of .ply" in msg and "(1 file): stick/notes.docx;" in msg
    assert "fix or remove them (docs/own-data.md)" in msg
    assert ".hidden" not in msg
    lines = listed_file(msg).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(f"# 5 bad files in {root}")
    rows = dict(line.split("\t") for line in lines[1:])
    assert rows["ball/empty.ply"] == "empty" and rows["plate/small.xyz"].startswith("too small: 2 points")
    assert set(rows) == {"ball/empty.ply", "ball/nan.txt", "plate/small.xyz", "plate/broken.npy", "stick/notes.docx"}
    assert listed_file(msg).parent == tmp_path  # the system's temporary folder, not the data folder


def test_empty_class_folder_and_folder_without_classes(tmp_path):
    root = write_folder(tmp_path / "data", per_class=1)
    (root / "empty_class").mkdir()
    with pytest.raises(DatasetFormatError, match="class folder.*with no files.*empty_class"):
        folder_dataset(root)
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(DatasetFormatError, match="no class subfolders in"):
        folder_dataset(flat)
    mesh = trimesh.creation.box()
    mesh.export(str(flat / "a.off"))
    with pytest.raises(DatasetFormatError, match="no class subfolders"):
        folder_dataset(flat)
    assert len(folder_dataset(flat, labels=False, subset="all")) == 1  # the same files, unlabelled


def test_degenerate_mesh_and_load_errors_name_the_file(tmp_path):
    (tmp_path / "flat.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n")
    with pytest.raises(BadFileError, match=r"flat.off: zero surface area"):
        load_cloud_file(str(tmp_path / "flat.off"), 10)
    (tmp_path / "x.stl").write_bytes(b"not an stl at all")
    with pytest.raises(BadFileError, match=r"x.stl: "):
        load_cloud_file(str(tmp_path / "x.stl"), 10)


# -------------------------------------------------------------------------------------- cache
def test_cache_is_used_from_the_second_epoch_and_by_later_runs(tmp_path):
    root = write_folder(tmp_path / "data", per_class=3)
    n_files = 9
    start = PARSE_COUNT["files"]
    ds = folder_dataset(root, subset="all")
    assert PARSE_COUNT["files"] - start == n_files  # the scan read every file once, into the cache
    cache = root / ".intermae_cache"
    assert len(list(cache.glob("*.npy"))) == n_files
    first = [ds[i][2][0] for i in range(len(ds))]  # epoch 1
    second = [ds[i][2][0] for i in range(len(ds))]  # epoch 2
    assert PARSE_COUNT["files"] - start == n_files  # both epochs read the cache
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    folder_module._SCANS.clear()  # a later run
    folder_dataset(root, subset="all")
    assert PARSE_COUNT["files"] - start == n_files
    # a changed file is read again; cache: false reads the files every epoch
    target = root / ds.files[0]
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    folder_module._SCANS.clear()
    folder_dataset(root, subset="all")
    assert PARSE_COUNT["files"] - start == n_files + 1
    folder_module._SCANS.clear()
    uncached = folder_dataset(root, subset="all", cache=False)
    before = PARSE_COUNT["files"]
    for _ in range(2):
        fresh = [uncached[i][2][0] for i in range(len(uncached))]
    assert PARSE_COUNT["files"] - before == 2 * n_files
    for a, b in zip(first, fresh):
        assert torch.equal(a, b)  # the same points with or without the cache


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_data_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "data", per_class=1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    os.chmod(root, 0o555)
    try:
        ds = folder_dataset(root, subset="all")
    finally:
        os.chmod(root, 0o755)
    assert ds.cache.folder == str(tmp_path / "xdg" / "inter-mae" / "folders")
    assert len(list(Path(ds.cache.folder).glob("*.npy"))) == 3


def test_views_for_the_image_branch_are_rendered_once_and_cached(tmp_path):
    root = write_folder(tmp_path / "data", per_class=1, classes=("ball",))
    ds = folder_dataset(root, subset="all", labels=False, npoints=64, n_imgs=2, IMG_SIZE=32)
    np.random.seed(0)
    _, _, data = ds[0]
    assert data["points"].shape == (64, 3) and data["imgs"].shape == (2, 3, 32, 32)
    assert 0.0 <= data["imgs"].min() and data["imgs"].max() == 1.0 and data["imgs"].min() < 0.9  # a shape on white
    pngs = sorted((root / ".intermae_cache").glob("*.png"))
    assert len(pngs) == 2
    np.random.seed(0)
    assert torch.equal(ds[0][2]["imgs"], data["imgs"])  # the same views, now read from the cache
    assert sorted((root / ".intermae_cache").glob("*.png")) == pngs
    with pytest.raises(DatasetFormatError, match="IMG_SOURCE"):
        folder_dataset(root, subset="all", labels=False, n_imgs=1, IMG_SOURCE="rendered")


# ----------------------------------------------------------------------------- main.py runs
TINY_PRETRAIN_OPTS = ["model.transformer_config.trans_dim=32", "model.transformer_config.encoder_dims=32",
                      "model.transformer_config.embed_dim=32", "model.transformer_config.depth=1",
                      "model.transformer_config.num_heads=2", "model.transformer_config.decoder_embed_dim=32",
                      "model.transformer_config.decoder_depth=1", "model.transformer_config.decoder_num_heads=2",
                      "model.group_size=8", "model.num_group=8", "npoints=64", "total_bs=4", "max_epoch=1",
                      f"dataset.train.N_POINTS={N_POINTS}", f"dataset.val.N_POINTS={N_POINTS}",
                      f"dataset.test.N_POINTS={N_POINTS}", "dataset.train.npoints=64", "dataset.val.npoints=64",
                      "dataset.test.npoints=64"]


IMAGE_BRANCH_OPTS = ["model.image_branch.enabled=true", "model.image_branch.model=vit_tiny_patch16_224",
                     "model.image_branch.model_kwargs={img_size: 32, depth: 1, embed_dim: 48, num_heads: 2}",
                     "dataset.train.n_imgs=1", "dataset.train.IMG_SIZE=32"]


@pytest.mark.parametrize("branch", ["points", "images"])
def test_pretrain_on_a_folder_of_clouds_for_one_epoch(tmp_path, branch):
    import main as main_module
    from utils.checkpoint import load_checkpoint_file

    root = write_folder(tmp_path / "clouds", per_class=3)
    exp_root = tmp_path / "exp"
    main_module.main(["--config", "cfgs/pretrain_folder.yaml", "--exp_name", "mine", "--data_root", str(root),
                      "--device", "cpu", "--num_workers", "0", "--experiment_root", str(exp_root),
                      "--opts", *TINY_PRETRAIN_OPTS, *(IMAGE_BRANCH_OPTS if branch == "images" else []),
                      # the step-budget threshold is a config key (0: no step warning); the points run keeps it
                      *(["min_pretrain_steps=0"] if branch == "images" else [])])
    run = exp_root / "pretrain_folder" / "mine"
    ckpt = load_checkpoint_file(str(run / "ckpt-last.pth"))
    assert ckpt["epoch"] == 0 and any(k.startswith("MAE_encoder.") for k in ckpt["base_model"])
    assert any(k.startswith("image_branch.") for k in ckpt["base_model"]) == (branch == "images")
    log = next(run.glob("*.log")).read_text()
    assert "[Validation] EPOCH: 0 val_loss_rec" in log  # on the folder's seeded test share
    assert "[Feature health] EPOCH: 0 validation features: effective rank" in log
    # 6 train shapes (2 of each class's 3; 1 to the test share) at batch 4, last short batch dropped: 1 step;
    # the config's 10 warm-up epochs cover the 1-epoch run.
    step_warning = "[Pre-training] WARNING: 1 optimizer steps planned (1 batches an epoch x 1 epochs), fewer than 1200"
    assert (step_warning in log) == (branch == "points")
    assert "initial_epochs = 10) covers all 1 epochs" in log
    assert f"[PointCloudFolder] {root}: subset 'train' " in log  # the dataset's own lines reach the run log
    assert ("loss_con_raw" in log) == (branch == "images")
    assert len(list((root / ".intermae_cache").glob("*.npy"))) == 9
    assert (run / "split.json").is_file()
    assert len(list((root / ".intermae_cache").glob("*.png"))) == (4 if branch == "images" else 0)  # 1 view x 4 steps


# ------------------------------------------------------------------- points per file: N_POINTS
TINY_FINETUNE_OPTS = ["model.trans_dim=32", "model.encoder_dims=32", "model.depth=1", "model.num_heads=2",
                      "model.group_size=8", "model.num_group=8", "npoints=64", "total_bs=4",
                      "scheduler.kwargs.initial_epochs=0", "max_epoch=1"]


def write_npy_folder(root: Path, n_points: int, per_class: int = 4, classes=("ball", "plate", "stick")) -> Path:
    """ModelNet40's ready-made layout: one (n_points, 3) float32 .npy per shape, surface samples."""
    rng = np.random.default_rng(7)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pts = make_mesh(kind, rng).sample(n_points, seed=int(rng.integers(1 << 30)))
            np.save(root / kind / f"{kind}_{i:04d}.npy", np.asarray(pts, dtype=np.float32))
    return root


def test_a_folder_of_1024_point_npy_files_trains_with_the_default_config(tmp_path):
    """N_POINTS: auto (the default): a folder of 1024-point files is read with 1024 points per file,
    and the number is saved in the run's config.yaml and checkpoints, which --test and predict read."""
    import main as main_module
    from engine.predict import Predictor
    from utils.checkpoint import load_checkpoint_file
    from utils.config import cfg_from_yaml_file

    root = write_npy_folder(tmp_path / "modelnet npy", 1024)
    exp_root = tmp_path / "exp"
    main_module.main(["--config", "cfgs/finetune_folder.yaml", "--scratch_model", "--exp_name", "npy", "--data_root",
                      str(root), "--device", "cpu", "--num_workers", "0", "--experiment_root", str(exp_root),
                      "--opts", *TINY_FINETUNE_OPTS])
    run = exp_root / "finetune_folder" / "npy"
    saved = cfg_from_yaml_file(str(run / "config.yaml"))
    assert [saved.dataset[s].others.N_POINTS for s in ("train", "val", "test")] == [1024, 1024, 1024]
    assert load_checkpoint_file(str(run / "ckpt-last.pth"))["config"]["dataset"]["test"]["others"]["N_POINTS"] == 1024
    log = next(run.glob("*.log")).read_text(encoding="utf-8")
    assert "N_POINTS: auto -> 1024 points per file" in log
    assert len(list((root / ".intermae_cache").glob("*.npy"))) == 12  # 12 files read once, at 1024 points
    assert Predictor.from_checkpoint(str(run / "ckpt-last.pth"), device="cpu").n_points == 1024
    results = main_module.main(["--test", "--ckpts", str(run / "ckpt-last.pth"), "--experiment_root", str(exp_root),
                                "--device", "cpu", "--num_workers", "0"])
    assert 0.0 <= results["acc"] <= 100.0


def test_too_small_files_are_refused_before_the_run_folder_grouped_with_the_fix(tmp_path, monkeypatch, capsys):
    """Files of 1024 points with N_POINTS = 2048 set: one line through the command, the files grouped
    by reason (at most 10 names each, the count of the others), the one setting that reads them named
    once, every file in the list it names; no run folder (nor experiments folder) is made."""
    import main as main_module
    from utils.cli import run_main

    root = write_npy_folder(tmp_path / "data", 1024)
    for i in range(11):
        (root / "ball" / f"empty_{i:02d}.ply").write_bytes(b"")
    (root / "stick" / "notes.docx").write_text("not a shape")
    exp_root = tmp_path / "exp"
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    argv = ["--config", "cfgs/finetune_folder.yaml", "--scratch_model", "--exp_name", "mine", "--data_root", str(root),
            "--device", "cpu", "--experiment_root", str(exp_root), "--opts", *TINY_FINETUNE_OPTS, "dataset.N_POINTS=2048"]
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: main_module.main(argv), prog="main.py")
    stderr = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("main.py: error:")]
    assert len(errors) == 1 and errors[0].endswith(".txt [DatasetFormatError]")
    line = errors[0][: -len(" [DatasetFormatError]")]
    assert len(line) < 3000
    assert f"24 bad files in {root}: " in line
    small = [f"{c}/{c}_{i:04d}.npy" for c in ("ball", "plate", "stick") for i in range(4)]
    assert ("too small: 1024 points, fewer than N_POINTS = 2048 (12 files): " + ", ".join(small[:10])
            + ", ... and 2 more; ") in line
    assert small[10] not in line and small[11] not in line
    empty = [f"ball/empty_{i:02d}.ply" for i in range(11)]
    assert "empty (11 files): " + ", ".join(empty[:10]) + ", ... and 1 more; " in line
    assert "(1 file): stick/notes.docx; " in line
    assert line.count("dataset.N_POINTS=1024") == 1
    assert "12 of the too-small files hold 1024 points, enough for npoints = 64: --opts dataset.N_POINTS=1024" in line
    listed = Path(line.rsplit("; every file and its reason: ", 1)[1])
    assert listed.parent == tmp_path / "tmp"
    rows = dict(row.split("\t") for row in listed.read_text(encoding="utf-8").splitlines()[1:])
    assert sorted(rows) == sorted(small + empty + ["stick/notes.docx"])
    assert all(rows[name] == "too small: 1024 points, fewer than N_POINTS = 2048" for name in small)
    assert not exp_root.exists()  # refused at start-up, as a bad config: nothing written


def test_auto_takes_the_smallest_usable_count_at_most_2048(tmp_path):
    """auto: the smallest point file's count among those with at least npoints (meshes: any count),
    at most 2048; a file below npoints is bad, named with npoints."""
    root = tmp_path / "clouds"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("a", 150), ("b", 120), ("c", 3000)):
        np.save(root / f"{name}.npy", rng.normal(size=(n, 3)).astype(np.float32))
    write_shape(root / "m", "off", make_mesh("ball", rng), rng)
    write_shape(root / "t", "xyz", make_mesh("ball", rng), rng, n_cloud=130)
    ds = folder_dataset(root, labels=False, subset="all", N_POINTS="auto", npoints=64)
    assert ds.n_points == 120 and len(ds) == 5
    assert all(ds.points(i).shape == (120, 3) for i in range(len(ds)))
    np.testing.assert_array_equal(ds.points(ds.files.index("b.npy")), np.load(root / "b.npy"))  # every point
    np.save(root / "d.npy", rng.normal(size=(30, 3)).astype(np.float32))
    with pytest.raises(DatasetFormatError, match=r"^1 bad file in .*: too small: 30 points, fewer than npoints = 64 "
                                                 r"\(1 file\): d.npy;"):
        folder_dataset(root, labels=False, subset="all", N_POINTS="auto", npoints=64)
    big = tmp_path / "big"
    big.mkdir()
    for name, n in (("a", 3000), ("b", 2500)):
        np.save(big / f"{name}.npy", rng.normal(size=(n, 3)).astype(np.float32))
    assert folder_dataset(big, labels=False, subset="all", N_POINTS="auto", npoints=64).n_points == 2048
    with pytest.raises(DatasetFormatError, match="N_POINTS = 'many': expected a positive integer"):
        folder_dataset(big, labels=False, subset="all", N_POINTS="many")


def test_one_key_sets_the_points_per_file_of_every_subset(tmp_path):
    """--opts dataset.N_POINTS=N sets others.N_POINTS of the train, val and test entries; auto is
    for folder datasets only."""
    from datasets import DATASETS
    from models import MODELS
    from utils.config import ConfigError
    from utils.overrides import load_config
    from utils.validate import validate_config

    cfg = load_config("cfgs/finetune_folder.yaml", ["dataset.N_POINTS=1024"], None, MODELS, DATASETS)
    assert [cfg.dataset[s].others.N_POINTS for s in ("train", "val", "test")] == [1024, 1024, 1024]
    cfg = load_config("cfgs/finetune_folder.yaml", [], None, MODELS, DATASETS)
    assert cfg.dataset.train._base_.N_POINTS == "auto"
    validate_config(cfg, "finetune", MODELS, DATASETS)
    with pytest.raises(ConfigError, match="is neither a dataset entry nor a key of one"):
        load_config("cfgs/finetune_folder.yaml", ["dataset.N_PONTS=1024"], None, MODELS, DATASETS)
    cfg = load_config("cfgs/finetune_modelnet.yaml", ["dataset.N_POINTS=auto"], None, MODELS, DATASETS)
    with pytest.raises(ConfigError, match=r"N_POINTS' = 'auto': expected an integer >= 1 \('auto' is for "
                                          r"PointCloudFolder"):
        validate_config(cfg, "finetune", MODELS, DATASETS)
