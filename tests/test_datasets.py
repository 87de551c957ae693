"""Dataset loaders on the released formats: ModelNet cache (read and build), few-shot loader and
split generator, ScanObjectNN HDF5 and ShapeNetPart. Test data is written by tests/writers.py or
here, in the released formats (pickle / HDF5 / text), independently of the project's generators."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from easydict import EasyDict

from datasets import build_dataset_from_cfg
from datasets.common import DatasetFormatError
from datasets.ModelNetDatasetFewShot import make_fewshot_splits
from datasets.modelnet_cache import load_modelnet_cache
from datasets.ShapeNetPartDataset import PartNormalDataset, ShapeNetPartFormatError
from writers import CATS, SYNSETS, modelnet_cfg, numpy_fps, unit_sphere, write_modelnet, write_shapenetpart


# ------------------------------------------------------------------------------------ ModelNet
@pytest.mark.parametrize("num_category", [40, 10])
def test_modelnet_reads_released_cache(tmp_path, num_category):
    data = write_modelnet(tmp_path / "mn", cache_points=48, num_category=num_category)
    for subset, size in (("train", 6), ("test", 4)):
        ds = build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", subset, 48, normals=True, num_category=num_category))
        assert len(ds) == size
        pts_ref, labels = data[subset]
        for i in range(size):
            tax, model_id, (points, label) = ds[i]
            assert (tax, model_id) == ("ModelNet", "sample")
            assert points.dtype == torch.float32 and points.shape == (48, 6) and label == labels[i]
            expected = np.concatenate([unit_sphere(pts_ref[i][:, :3]), pts_ref[i][:, 3:]], axis=1)
            got = points.numpy()
            if subset == "train":  # point order shuffled, rows kept
                got, expected = got[np.lexsort(got.T)], expected[np.lexsort(expected.T)]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    ds = build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", "test", 48, normals=False, num_category=num_category))
    assert ds[0][2][0].shape == (48, 3)
    wrong = tmp_path / "mn" / f"modelnet{num_category}_test_32pts_fps.dat"  # holds 48-point shapes
    wrong.write_bytes((tmp_path / "mn" / f"modelnet{num_category}_test_48pts_fps.dat").read_bytes())
    with pytest.raises(DatasetFormatError, match=r"_test_32pts_fps.dat': expected \(32, 6\)"):
        build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", "test", 32, num_category=num_category))


def test_modelnet_builds_cache_with_fps_matching_numpy(tmp_path):
    data = write_modelnet(tmp_path / "mn", ids_per_split=(("test", 3),), n_rows=150)
    ds = build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", "test", 40, normals=True))
    with open(tmp_path / "mn" / "modelnet40_test_40pts_fps.dat", "rb") as f:
        pts, labels = pickle.load(f)
    rows, gt = data["test"]
    assert len(ds) == len(pts) == 3
    for i in range(3):
        assert pts[i].dtype == np.float32 and pts[i].shape == (40, 6)
        assert labels[i].dtype == np.int32 and labels[i].shape == (1,) and labels[i][0] == gt[i]
        np.testing.assert_array_equal(pts[i], rows[i][numpy_fps(rows[i][:, :3].astype(np.float64), 40)])


def test_load_modelnet_cache_builds_a_missing_cache_then_reads_it(tmp_path):
    data = write_modelnet(tmp_path / "mn", ids_per_split=(("train", 3),), n_rows=90)
    with pytest.raises(FileNotFoundError, match="modelnet40_train_32pts_fps.dat"):
        load_modelnet_cache(str(tmp_path / "mn"), "train", 32, build=False)
    pts, labels = load_modelnet_cache(str(tmp_path / "mn"), "train", 32)
    assert (tmp_path / "mn" / "modelnet40_train_32pts_fps.dat").is_file()
    rows, gt = data["train"]
    assert len(pts) == len(labels) == 3
    for i in range(3):
        assert pts[i].shape == (32, 6) and int(labels[i][0]) == gt[i]
        np.testing.assert_array_equal(pts[i], rows[i][numpy_fps(rows[i][:, :3].astype(np.float64), 32)])
    again, _ = load_modelnet_cache(str(tmp_path / "mn"), "train", 32, build=False)
    for a, b in zip(again, pts):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------ few-shot
def test_fewshot_loader_split_counts(tmp_path):
    rng = np.random.default_rng(0)
    way, shot = 5, 10
    split = {"train": [], "test": []}
    for name, per_class in (("train", shot), ("test", 20)):
        for k in range(way):
            for _ in range(per_class):
                split[name].append((rng.normal(size=(64, 6)).astype(np.float32), k, 7 * k))
    (tmp_path / f"{way}way_{shot}shot").mkdir()
    with open(tmp_path / f"{way}way_{shot}shot" / "3.pkl", "wb") as f:
        pickle.dump(split, f)
    base = dict(NAME="ModelNetFewShot", DATA_PATH=str(tmp_path), N_POINTS=64, NUM_CATEGORY=40, USE_NORMALS=False)
    for subset, size in (("train", way * shot), ("test", way * 20)):
        ds = build_dataset_from_cfg(EasyDict(base, subset=subset, way=way, shot=shot, fold=3))
        assert len(ds) == size
        labels = [ds[i][2][1] for i in range(size)]
        assert sorted(set(labels)) == list(range(way)) and all(labels.count(k) == size // way for k in range(way))
        points = ds[0][2][0]
        assert points.shape == (64, 3) and points.dtype == torch.float32
        assert np.isclose(np.sqrt((points.numpy() ** 2).sum(1)).max(), 1.0, atol=1e-5)
    with pytest.raises(DatasetFormatError, match="--way"):
        build_dataset_from_cfg(EasyDict(base, subset="train"))


def test_fewshot_generator_split_counts_read_by_the_loader(tmp_path):
    rng = np.random.default_rng(3)
    n_cls = 12
    tr_lab = [np.array([c], np.int32) for c in range(n_cls) for _ in range(25)]
    te_lab = [np.array([c], np.int32) for c in range(n_cls) for _ in range(22)]
    tr_pts = [rng.normal(size=(32, 6)).astype(np.float32) + float(l[0]) for l in tr_lab]
    te_pts = [rng.normal(size=(32, 6)).astype(np.float32) + float(l[0]) for l in te_lab]
    make_fewshot_splits(tr_pts, tr_lab, te_pts, te_lab, str(tmp_path), ways=(5, 10), shots=(10, 20), folds=2, seed=0)
    for way in (5, 10):
        for shot in (10, 20):
            for fold in (0, 1):
                with open(tmp_path / f"{way}way_{shot}shot" / f"{fold}.pkl", "rb") as f:
                    split = pickle.load(f)
                for name, per_class in (("train", shot), ("test", 20)):
                    items = split[name]
                    assert len(items) == way * per_class
                    labels = [it[1] for it in items]
                    assert all(labels.count(k) == per_class for k in range(way))
                    orig = {it[1]: it[2] for it in items}
                    assert len(set(orig.values())) == way  # distinct original classes
                    for pts, label, cls in items:  # a point cloud of the stated original class
                        assert pts.dtype == np.float32 and pts.shape == (32, 6) and orig[label] == cls
                        assert abs(float(pts.mean()) - cls) < 1.0
                ds = build_dataset_from_cfg(EasyDict(NAME="ModelNetFewShot", DATA_PATH=str(tmp_path), N_POINTS=32,
                                                     NUM_CATEGORY=40, USE_NORMALS=True, subset="train", way=way,
                                                     shot=shot, fold=fold))
                assert len(ds) == way * shot and ds[0][2][0].shape == (32, 6)


def test_fewshot_generator_seeded_by_default_unseeded_with_a_negative_seed(tmp_path):
    """The released generator shuffles with Python's unseeded ``random``; here ``seed >= 0`` makes
    every file repeatable and ``seed=-1`` (``tools/make_fewshot.py --seed -1``) draws fresh ones."""
    rng = np.random.default_rng(4)
    labs = [np.array([c], np.int32) for c in range(8) for _ in range(30)]
    pts = [rng.normal(size=(16, 6)).astype(np.float32) for _ in labs]

    def fold(out, seed):
        make_fewshot_splits(pts, labs, pts, labs, str(tmp_path / out), ways=(5,), shots=(10,), folds=1, seed=seed)
        return (tmp_path / out / "5way_10shot" / "0.pkl").read_bytes()

    assert fold("a", 0) == fold("b", 0)
    unseeded = [fold(name, -1) for name in ("c", "d")]
    assert unseeded[0] != unseeded[1]
    for data in unseeded:
        split = pickle.loads(data)
        assert sorted(split) == ["test", "train"] and len(split["train"]) == 50 and len(split["test"]) == 100
        points, label, cls = split["train"][0]
        assert points.dtype == np.float32 and points.shape == (16, 6) and 0 <= label < 5 and 0 <= cls < 8


# --------------------------------------------------------------------------------- ScanObjectNN
@pytest.mark.parametrize("name,suffix", [("ScanObjectNN", ""), ("ScanObjectNN_hardest", "_augmentedrot_scale75")])
def test_scanobjectnn_reads_h5(tmp_path, name, suffix):
    rng = np.random.default_rng(1)
    ref = {}
    for prefix, n in (("training", 7), ("test", 3)):
        data = rng.normal(size=(n, 2048, 3)).astype(np.float32)
        label = rng.integers(0, 15, size=n).astype(np.int64)
        with h5py.File(tmp_path / f"{prefix}_objectdataset{suffix}.h5", "w") as h5:
            h5["data"], h5["label"], h5["mask"] = data, label, np.zeros((n, 2048), dtype=np.int64)
        ref[prefix] = (data, label)
    for subset, prefix in (("train", "training"), ("test", "test")):
        ds = build_dataset_from_cfg(EasyDict(NAME=name, ROOT=str(tmp_path), subset=subset))
        data, label = ref[prefix]
        assert len(ds) == len(label)
        for i in range(len(ds)):
            tax, _, (points, lab) = ds[i]
            assert tax == "ScanObjectNN" and points.shape == (2048, 3) and points.dtype == torch.float32
            assert lab == label[i]
            got = points.numpy()
            if subset == "train":
                got, exp = got[np.lexsort(got.T)], data[i][np.lexsort(data[i].T)]
            else:
                exp = data[i]
            np.testing.assert_array_equal(got, exp)
    with pytest.raises(DatasetFormatError, match="objectdataset"):
        build_dataset_from_cfg(EasyDict(NAME=name, ROOT=str(tmp_path / "nowhere"), subset="test"))


# --------------------------------------------------------------------------------- ShapeNetPart
@pytest.fixture(scope="module")
def part_root(tmp_path_factory) -> Path:
    return write_shapenetpart(tmp_path_factory.mktemp("shapenetpart"), {"Bag": (3, 1, 2), "Table": (3, 1, 2)})


def test_shapenetpart_reads_released_layout(part_root):
    train = PartNormalDataset(str(part_root), npoints=64, split="trainval")
    test = PartNormalDataset(str(part_root), npoints=64, split="test", normal_channel=True)
    assert len(train) == 8 and len(test) == 4
    for dataset, channels in ((train, 3), (test, 6)):
        for index in range(len(dataset)):
            points, category, parts = dataset[index]
            name, path = dataset.datapath[index]
            assert points.shape == (64, channels) and points.dtype == np.float32
            assert category.tolist() == [CATS.index(name)] and parts.shape == (64,)
            raw = np.loadtxt(path)
            centroid = raw[:, :3].mean(0)
            scale = np.linalg.norm(raw[:, :3] - centroid, axis=1).max()
            # Every sampled point is a row of the file, normalised to the unit sphere, with its label.
            restored = points[:, :3] * scale + centroid
            row = np.abs(restored[:, None, :] - raw[None, :, :3]).sum(-1).argmin(1)
            np.testing.assert_allclose(restored, raw[row, :3], atol=1e-4)
            np.testing.assert_array_equal(parts, raw[row, 6].astype(int))
            if channels == 6:
                np.testing.assert_allclose(points[:, 3:], raw[row, 3:6], atol=1e-5)
            assert np.linalg.norm(points[:, :3], axis=1).max() <= 1.0 + 1e-5


def test_shapenetpart_errors_name_the_problem(tmp_path):
    with pytest.raises(ShapeNetPartFormatError, match="synsetoffset2category.txt"):
        PartNormalDataset(str(tmp_path), split="test")
    with pytest.raises(ShapeNetPartFormatError, match="does not exist"):
        PartNormalDataset(str(tmp_path / "nowhere"), split="test")
    broken = write_shapenetpart(tmp_path / "broken", {"Mug": (1, 0, 1)}, rows=8)
    token_file = next((broken / SYNSETS[CATS.index("Mug")]).glob("test*.txt"))
    token_file.write_text("0.1 0.2 0.3 7\n")
    with pytest.raises(ShapeNetPartFormatError, match=token_file.name):
        PartNormalDataset(str(broken), split="test")[0]
    token_file.unlink()
    with pytest.raises(ShapeNetPartFormatError, match="listed in the test split"):
        PartNormalDataset(str(broken), split="test")


# ------------------------------------------------------------------------------- ShapeNetRender
def test_shapenet_render_globs_every_shape_unless_split_file(tmp_path):
    """As the released load_shapenet_data: every <synset>/<model>.ply, whatever the subset and
    whatever split lists lie in DATA_PATH; ``split: file`` reads <subset>.txt instead."""
    from datasets.io import write_ply

    rng = np.random.default_rng(0)
    shapes = [f"9000000{s}/m{i}" for s in range(2) for i in range(3)]
    for name in shapes:
        (tmp_path / "ShapeNet" / name.split("/")[0]).mkdir(parents=True, exist_ok=True)
        write_ply(str(tmp_path / "ShapeNet" / f"{name}.ply"), rng.normal(size=(64, 3)).astype(np.float32))
    (tmp_path / "train.txt").write_text("90000000/m0\n90000001/m2\n")
    (tmp_path / "test.txt").write_text("90000000/m1\n")
    base = EasyDict(NAME="ShapeNetRender", DATA_PATH=str(tmp_path), N_POINTS=64)

    def names(**others):
        ds = build_dataset_from_cfg(base, dict(npoints=32, n_imgs=0, **others))
        return [f"{f['taxonomy_id']}/{f['model_id']}" for f in ds.file_list]

    assert names(subset="train") == names(subset="test") == names(subset="train", split="all") == shapes
    assert names(subset="train", split="file") == ["90000000/m0", "90000001/m2"]
    assert names(subset="test", split="file") == ["90000000/m1"]
    (tmp_path / "train.txt").unlink()
    assert names(subset="train", split="file") == shapes  # a missing train.txt: every shape
    with pytest.raises(DatasetFormatError, match="val.txt"):
        names(subset="val", split="file")
    with pytest.raises(DatasetFormatError, match="split must be one of"):
        names(subset="train", split="some")
    points = build_dataset_from_cfg(base, dict(subset="test", npoints=32, n_imgs=0))[0][2]
    assert points.shape == (32, 3) and points.dtype == torch.float32
