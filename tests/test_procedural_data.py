"""Procedural shapes (uniformity, normals) and every demo dataset written in its released format."""
from __future__ import annotations

import json
import os
import pickle

import h5py
import numpy as np
import pytest
from PIL import Image

from datasets.ModelNetDatasetFewShot import make_fewshot_splits
from datasets.io import read_ply
from demo import generate as M
from demo import shapes as P


# ----------------------------------------------------------------------------- shapes

def test_box_faces_area_weighted_and_on_surface():
    rng = np.random.default_rng(0)
    size = np.array([1.0, 2.0, 3.0])
    pts, nrm, _ = P.sample_patches(P.box(size), 60000, rng)
    h = size / 2
    on_face = np.isclose(np.abs(pts), h, atol=1e-5)
    assert on_face.any(1).all() and (np.abs(pts) <= h + 1e-5).all()
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    frac = np.array([on_face[:, i].mean() for i in range(3)])
    np.testing.assert_allclose(frac, areas / areas.sum(), atol=0.01)
    np.testing.assert_allclose(np.abs(nrm).max(1), 1.0)
    assert ((nrm * pts).sum(1) > 0).all()  # outward


def test_cone_side_uniform_and_shapes_outward():
    rng = np.random.default_rng(1)
    pts, nrm, _ = P.sample_patches(P.frustum(1.0, 0.0, 2.0), 40000, rng)
    # lateral area below half height of a cone = 1 - (1/2)^2 of the total
    assert abs((pts[:, 2] < 1.0).mean() - 0.75) < 0.01
    np.testing.assert_allclose(np.hypot(pts[:, 0], pts[:, 1]), 1.0 - pts[:, 2] / 2, atol=1e-6)
    pts, nrm, _ = P.sample_patches(P.torus(1.0, 0.3), 20000, rng)
    np.testing.assert_allclose((np.hypot(pts[:, 0], pts[:, 1]) - 1.0) ** 2 + pts[:, 2] ** 2, 0.09, atol=1e-6)
    assert abs((np.hypot(pts[:, 0], pts[:, 1]) > 1.0).mean() - (0.5 + 0.3 / np.pi)) < 0.015  # outer half is larger
    for fam in ("sphere", "ellipsoid", "box", "cylinder", "cone", "capsule", "pyramid", "plate"):
        p, n = P.sample_family(fam, 4000, np.random.default_rng(2))
        assert p.dtype == n.dtype == np.float32 and p.shape == n.shape == (4000, 3)
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
        c = (p.max(0) + p.min(0)) / 2
        assert ((n * (p - c)).sum(1) > -1e-4).mean() > 0.999, fam


def test_families_deterministic_and_part_objects_cover_all_parts():
    assert len(P.FAMILIES) >= 12
    for fam in P.FAMILIES:
        a = P.sample_family(fam, 300, np.random.default_rng(5))
        b = P.sample_family(fam, 300, np.random.default_rng(5))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.isfinite(a[0]).all(), fam
    for name, synset, first, n_parts in M.SHAPENETPART_CATEGORIES:
        seen = set()
        for i in range(10):
            _, _, lab = P.sample_part_object(name, 800, np.random.default_rng(i))
            assert lab.min() >= 0 and lab.max() < n_parts and len(np.unique(lab)) >= 2
            seen |= set(lab.tolist())
        assert seen == set(range(n_parts)), name


# ----------------------------------------------------------------------------- datasets on disk

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    M.make_shapenet55(root, 0, shapes_per_class=2)
    M.make_shapenet_render(root, 0, shapes_per_class=1)
    M.make_modelnet(root, 0, train_per_class=2, test_per_class=1, n_rows=160, cache_points=(64,))
    M.make_fewshot_from_cache(root, 0, folds=1, npoints=64)
    M.make_shapenetpart(root, 0, shapes_per_class=3, n_points=600)
    M.make_scanobjectnn(root, 0, train_per_class=1, test_per_class=1, hardest_copies=1)
    return root


def test_shapenet55_layout(demo):
    base = os.path.join(demo, "ShapeNet55-34")
    names = {s: open(os.path.join(base, "ShapeNet-55", f"{s}.txt")).read().split() for s in ("train", "test")}
    assert len(names["train"]) + len(names["test"]) == 2 * len(M.SHAPENET_CLASSES) and names["test"]
    for name in names["train"] + names["test"]:
        synset, model = name[:-4].split("-")
        assert name.endswith(".npy") and len(synset) == 8 and synset.startswith("9") and int(model, 16) >= 0
        arr = np.load(os.path.join(base, "shapenet_pc", name))
        assert arr.dtype == np.float32 and arr.shape == (8192, 3)
    assert M.make_shapenet55(demo, 0, shapes_per_class=2) is None  # complete: skipped


def test_shapenet_render_layout(demo):
    base = os.path.join(demo, "ShapeNetRender")
    plys = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(base, "ShapeNet")) for f in fs)
    assert len(plys) == len(M.SHAPENET_CLASSES)
    for ply in plys[:3]:
        assert open(ply, "rb").read(60).startswith(b"ply\nformat binary_little_endian 1.0\n")
        assert read_ply(ply).shape[0] >= 2048
        synset, model = ply.split(os.sep)[-2], os.path.basename(ply)[:-4]
        rdir = os.path.join(base, "ShapeNetRendering", synset, model, "rendering")
        assert open(os.path.join(rdir, "renderings.txt")).read().split() == [f"{v:02d}.png" for v in range(24)]
        meta = [ln.split() for ln in open(os.path.join(rdir, "rendering_metadata.txt")).read().splitlines()]
        assert len(meta) == 24 and all(len(m) == 5 for m in meta) and float(meta[0][4]) == 25.0
        for v in (0, 13, 23):
            im = Image.open(os.path.join(rdir, f"{v:02d}.png"))
            a = np.asarray(im)
            assert im.mode == "RGBA" and im.size == (64, 64)  # the demo's size (real renderings: 137 x 137)
            assert a[[0, 0, -1, -1], [0, -1, 0, -1], 3].max() == 0 and a[26:38, 26:38, 3].max() == 255


def test_modelnet_layout_and_cache_is_fps_of_rows(demo):
    base = os.path.join(demo, "ModelNet", "modelnet40_normal_resampled")
    names = open(os.path.join(base, "modelnet40_shape_names.txt")).read().split()
    assert len(names) == 40 and names == sorted(names) and names[0] == "airplane" and "night_stand" in names
    assert open(os.path.join(base, "modelnet10_shape_names.txt")).read().split() == M.MODELNET10_CLASSES
    ids = open(os.path.join(base, "modelnet40_train.txt")).read().split()
    assert len(ids) == 80 and "night_stand_0001" in ids
    with open(os.path.join(base, "modelnet40_train_64pts_fps.dat"), "rb") as f:
        points, labels = pickle.load(f)
    assert len(points) == len(labels) == 80
    for k in (0, 37, 79):
        cls = "_".join(ids[k].split("_")[:-1])
        lines = open(os.path.join(base, cls, ids[k] + ".txt")).read().splitlines()
        assert len(lines) == 160 and all(len(ln.split(",")) == 6 for ln in lines)
        rows = np.array([[float(v) for v in ln.split(",")] for ln in lines], dtype=np.float32)
        # brute-force FPS, start at index 0
        sel, dist = [0], np.full(len(rows), np.inf)
        for _ in range(63):
            dist = np.minimum(dist, ((rows[:, :3] - rows[sel[-1], :3]) ** 2).sum(1))
            sel.append(int(dist.argmax()))
        np.testing.assert_array_equal(points[k], rows[sel])
        assert points[k].dtype == np.float32 and labels[k].dtype == np.int32 and labels[k].shape == (1,)
        assert int(labels[k][0]) == names.index(cls)
    with open(os.path.join(base, "modelnet10_test_64pts_fps.dat"), "rb") as f:
        p10, l10 = pickle.load(f)
    assert len(p10) == 10 and sorted(int(x[0]) for x in l10) == list(range(10))


def test_fewshot_files(demo, tmp_path):
    base = os.path.join(demo, "ModelNetFewshot")
    for way in (5, 10):
        for shot in (10, 20):
            with open(os.path.join(base, f"{way}way_{shot}shot", "0.pkl"), "rb") as f:
                d = pickle.load(f)
            assert len(d["train"]) == way * shot and len(d["test"]) == way * 20
            for pts, label, cls in d["train"] + d["test"]:
                assert pts.dtype == np.float32 and pts.shape == (64, 6) and 0 <= label < way and 0 <= cls < 40
    rng = np.random.default_rng(0)
    pts = [rng.normal(size=(8, 6)).astype(np.float32) for _ in range(60)]
    labs = [np.array([i % 6], np.int32) for i in range(60)]
    for out in ("a", "b"):
        make_fewshot_splits(pts[:40], labs[:40], pts[40:], labs[40:], str(tmp_path / out), [5], [3], 2, seed=1,
                            n_test_per_class=2)
    for fold in (0, 1):
        a = (tmp_path / "a" / "5way_3shot" / f"{fold}.pkl").read_bytes()
        assert a == (tmp_path / "b" / "5way_3shot" / f"{fold}.pkl").read_bytes()
    d = pickle.loads(a)
    assert [t[1] for t in d["train"]] == [k for k in range(5) for _ in range(3)]
    assert len(d["test"]) == 10 and len({(t[1], t[2]) for t in d["train"] + d["test"]}) == 5
    for split, lo, hi in (("train", 0, 40), ("test", 40, 60)):  # each item is a shape of its original class
        for p, _, c in d[split]:
            j = next(k for k in range(lo, hi) if np.array_equal(pts[k], p))
            assert int(labs[j][0]) == c


def test_shapenetpart_layout(demo):
    base = os.path.join(demo, "shapenetcore_partanno_segmentation_benchmark_v0_normal")
    cats = [ln.split("\t") for ln in open(os.path.join(base, "synsetoffset2category.txt")).read().splitlines()]
    assert cats[0] == ["Airplane", "02691156"] and cats[-1] == ["Table", "04379243"] and len(cats) == 16
    ranges = {s: (first, first + n) for _, s, first, n in M.SHAPENETPART_CATEGORIES}
    total = 0
    for split in ("train", "val", "test"):
        entries = json.load(open(os.path.join(base, "train_test_split", f"shuffled_{split}_file_list.json")))
        total += len(entries)
        for e in entries:
            head, synset, token = e.split("/")
            assert head == "shape_data"
            rows = np.loadtxt(os.path.join(base, synset, token + ".txt"), dtype=np.float32)
            assert rows.shape == (600, 7)
            part = rows[:, 6]
            lo, hi = ranges[synset]
            assert np.array_equal(part, np.round(part)) and part.min() >= lo and part.max() < hi
            assert len(np.unique(part)) >= 2
    assert total == 16 * 3 + 8  # 3 shapes per category, one more in every other category
    test_counts = {e.split("/")[1]: 0 for e in json.load(open(os.path.join(base, "train_test_split", "shuffled_test_file_list.json")))}
    for e in json.load(open(os.path.join(base, "train_test_split", "shuffled_test_file_list.json"))):
        test_counts[e.split("/")[1]] += 1
    assert len(set(test_counts.values())) > 1  # unequal categories: class mIoU != instance mIoU in general
    line = open(os.path.join(base, "02691156", os.listdir(os.path.join(base, "02691156"))[0])).readline().split()
    assert len(line) == 7 and line[6].endswith(".000000")


def test_scanobjectnn_files(demo):
    base = os.path.join(demo, "ScanObjectNN")
    for rel, n in (("main_split/training_objectdataset.h5", 15), ("main_split/test_objectdataset.h5", 15),
                   ("main_split_nobg/training_objectdataset.h5", 15),
                   ("main_split/training_objectdataset_augmentedrot_scale75.h5", 15),
                   ("main_split/test_objectdataset_augmentedrot_scale75.h5", 15)):
        with h5py.File(os.path.join(base, rel), "r") as f:
            assert f["data"].dtype == np.float32 and f["data"].shape == (n, 2048, 3)
            assert f["label"].dtype == np.int64 and sorted(f["label"][:].tolist()) == list(range(15))
            mask = f["mask"][:]
            assert mask.shape == (n, 2048) and set(np.unique(mask)) <= {0, 1}
            if "nobg" in rel:
                assert mask.all()
            else:
                assert 0 < mask.mean() < 1  # object plus background


def test_interrupted_dataset_is_regenerated(tmp_path):
    root = str(tmp_path)
    M.make_scanobjectnn(root, 0, train_per_class=1, test_per_class=1, hardest_copies=1)
    path = os.path.join(root, "ScanObjectNN", "main_split_nobg", "test_objectdataset.h5")
    first = open(path, "rb").read()
    os.remove(os.path.join(root, "ScanObjectNN", M.MARKER))
    os.remove(os.path.join(root, "ScanObjectNN", "main_split", "test_objectdataset.h5"))
    assert M.make_scanobjectnn(root, 0, train_per_class=1, test_per_class=1, hardest_copies=1) is not None
    assert os.path.exists(os.path.join(root, "ScanObjectNN", "main_split", "test_objectdataset.h5"))
    with h5py.File(path, "r") as a, h5py.File(__import__("io").BytesIO(first), "r") as b:
        assert np.array_equal(a["data"][:], b["data"][:])  # deterministic
