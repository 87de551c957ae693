"""The readers of user files, each with a maker of valid files and a check of what it returns.

A :class:`Target` names one public entry point (the function a command calls on a file a user
downloads or receives), the file it reads (a path relative to a fresh folder, with the extensions
it accepts), a maker of valid files of that format (``make(rng, ext) -> {relative path: bytes}``;
the first entry is the file the fuzzer mutates, the others are written as they are; ``None`` as
content makes a FIFO; the key :data:`TAMPERED` marks a file made with a deliberately bad value, which
need not load), and ``check(result) -> problem or None`` for a file that loads.

``read(root, path)`` runs in the isolated worker (:mod:`tests.fuzz.isolate`); it imports the
project lazily so that this module stays cheap to import in the fuzzing process.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
N_POINTS = 32  # points per cloud asked of the readers: seeds hold at least this many
Files = Dict[str, Optional[bytes]]
TAMPERED = "<tampered>"  # a key of a maker's answer: this file need not load (its value is ignored)


@dataclass(frozen=True)
class Target:
    name: str
    filename: str                                   # relative path; its extension is replaced by ``ext``
    exts: Tuple[str, ...]
    make: Callable[[np.random.Generator, str], Files]
    read: Callable[[str, str], Any]
    check: Callable[[Any], Optional[str]]
    text: bool = False                              # a text format: text mutations apply too
    layout: Tuple[str, ...] = field(default=())     # static lines an error may add after its first line
    report_lines: bool = False                      # indented report lines allowed (the checkpoint shape table)
    slow: bool = False                              # fewer examples in the short profile
    folder: bool = False                            # a folder format: a message naming the folder names the input

    def path(self, ext: str) -> str:
        return os.path.splitext(self.filename)[0] + ext


# ------------------------------------------------------------------------------------- helpers
def _cloud(rng: np.random.Generator, lo: int = N_POINTS, hi: int = 3 * N_POINTS, cols: int = 3) -> np.ndarray:
    return rng.normal(size=(int(rng.integers(lo, hi + 1)), cols)).astype(np.float32)


def _points_ok(arr: Any, shape: Tuple[Optional[int], ...], dtype=np.float32) -> Optional[str]:
    if not isinstance(arr, np.ndarray):
        return f"returned {type(arr).__name__}, expected a NumPy array"
    if arr.dtype != dtype:
        return f"returned dtype {arr.dtype}, expected {np.dtype(dtype)}"
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        return f"returned shape {arr.shape}, expected {shape}"
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return "returned non-finite coordinates"
    return None


def _ply_bytes(rng: np.random.Generator, fmt: str) -> bytes:
    pts = _cloud(rng)
    extra = int(rng.integers(0, 4))
    cols = np.concatenate([pts, rng.normal(size=(len(pts), extra)).astype(np.float32)], axis=1)
    names = ["x", "y", "z", "nx", "ny", "nz"][: 3 + extra]
    types = [str(rng.choice(["float", "double", "float32"])) for _ in names]
    head = ["ply", f"format {fmt} 1.0", "comment fuzz seed", f"element vertex {len(pts)}"]
    head += [f"property {t} {n}" for t, n in zip(types, names)] + ["end_header"]
    header = ("\n".join(head) + "\n").encode("ascii")
    if fmt == "ascii":
        return header + "".join(" ".join(f"{v:.6g}" for v in row) + "\n" for row in cols).encode("ascii")
    endian = "<" if fmt == "binary_little_endian" else ">"
    code = {"float": "f4", "float32": "f4", "double": "f8"}
    dtype = np.dtype([(n, endian + code[t]) for n, t in zip(names, types)])
    rec = np.empty(len(pts), dtype=dtype)
    for i, n in enumerate(names):
        rec[n] = cols[:, i]
    return header + rec.tobytes()


def _mesh(rng: np.random.Generator):
    import trimesh

    n = int(rng.integers(4, 40))
    verts = rng.normal(size=(n, 3))
    faces = np.stack([rng.permutation(n)[:3] for _ in range(int(rng.integers(1, 30)))])
    return trimesh.Trimesh(vertices=verts, faces=faces, process=False)


def _export(mesh, file_type: str, **kwargs) -> bytes:
    out = mesh.export(file_type=file_type, **kwargs)
    return out.encode("utf-8") if isinstance(out, str) else bytes(out)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


# ------------------------------------------------------------------------ point and mesh files
def make_cloud(rng: np.random.Generator, ext: str) -> Files:
    """A valid point or mesh file of extension ``ext`` (several variants of each format)."""
    if ext == ".ply":
        if rng.random() < 0.25:
            return {"cloud.ply": _export(_mesh(rng), "ply", encoding=str(rng.choice(["ascii", "binary"])))}
        return {"cloud.ply": _ply_bytes(rng, str(rng.choice(["ascii", "binary_little_endian", "binary_big_endian"])))}
    if ext in (".xyz", ".txt", ".pts", ".csv"):
        pts = _cloud(rng, cols=int(rng.integers(3, 7)))
        sep = str(rng.choice([" ", ",", ";", "\t", ", "]))
        lines = ["# fuzz seed"] if rng.random() < 0.3 else []
        if rng.random() < 0.3:
            lines.append(sep.join(["x", "y", "z", "nx", "ny", "nz"][: pts.shape[1]]))
        lines += [sep.join(f"{v:.6g}" for v in row) for row in pts]
        return {"cloud" + ext: ("\n".join(lines) + "\n").encode("utf-8")}
    if ext == ".npy":
        dtype = rng.choice([np.float32, np.float64, np.int16])
        return {"cloud.npy": _npy_bytes((_cloud(rng, cols=int(rng.integers(3, 7))) * 10).astype(dtype))}
    if ext == ".npz":
        arrays = {str(rng.choice(["points", "xyz", "pc"])): _cloud(rng, cols=int(rng.integers(3, 7)))}
        if rng.random() < 0.5:
            arrays["label"] = np.array([int(rng.integers(0, 40))])
        return {"cloud.npz": _npz_bytes(arrays, rng)}
    mesh = _mesh(rng)
    if ext == ".off":
        return {"cloud.off": _export(mesh, "off")}
    if ext == ".stl":
        return {"cloud.stl": _export(mesh, str(rng.choice(["stl", "stl_ascii"])))}
    if ext == ".obj":
        text = _export(mesh, "obj", include_normals=bool(rng.random() < 0.5))
        if rng.random() < 0.3:  # a material library beside it: readers must not follow it
            side = str(rng.choice(["mat.mtl", ".fifo.mtl"]))
            content = None if side.startswith(".fifo") else b"newmtl m\nKd 1 0 0\nmap_Kd tex.png\n"
            return {"cloud.obj": f"mtllib {side}\nusemtl m\n".encode() + text, side: content}
        return {"cloud.obj": text}
    raise ValueError(ext)


def read_cloud(root: str, path: str):
    from datasets.io import load_cloud_file

    return load_cloud_file(path, N_POINTS, seed=0)


def check_cloud(result) -> Optional[str]:
    return _points_ok(result, (N_POINTS, 3))


def read_points_file(root: str, path: str):
    from engine.features import read_points

    return read_points(path)


def check_points(result) -> Optional[str]:
    return _points_ok(result, (None, 3))


# ------------------------------------------------------------------------------ released formats
def _npz_bytes(arrays: Dict[str, np.ndarray], rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if rng.random() < 0.5 else np.savez)(buf, **arrays)
    return buf.getvalue()


def make_modelnet_dat(rng: np.random.Generator, ext: str) -> Files:
    """The released pickle, or its ``.npz`` conversion (read in its place when it lies beside it)."""
    n = int(rng.integers(1, 5))
    points = [_cloud(rng, N_POINTS, N_POINTS, cols=6) for _ in range(n)]
    labels = [np.array([int(rng.integers(0, 40))], dtype=np.int32) for _ in range(n)]
    if ext == ".npz":
        return {"modelnet40_train_32pts_fps.npz": _npz_bytes({"points": np.stack(points), "labels": np.stack(labels)},
                                                              rng)}
    return {"modelnet40_train_32pts_fps.dat": pickle.dumps([points, labels], protocol=int(rng.integers(2, 6)))}


def read_modelnet_dat(root: str, path: str):
    from datasets.modelnet_cache import load_cache

    return load_cache(os.path.splitext(path)[0] + ".dat", N_POINTS)


def check_modelnet_dat(result) -> Optional[str]:
    points, labels = result
    if len(points) != len(labels) or not points:
        return f"returned {len(points)} clouds and {len(labels)} labels"
    for p, lab in zip(points, labels):
        problem = _points_ok(np.asarray(p), (N_POINTS, None), np.asarray(p).dtype)
        if problem or np.asarray(p).shape[1] < 3 or np.asarray(lab).size != 1:
            return problem or f"cloud {np.asarray(p).shape}, label {np.asarray(lab).shape}"
    return None


def make_fewshot_pkl(rng: np.random.Generator, ext: str) -> Files:
    data = {split: [(_cloud(rng, N_POINTS, N_POINTS, cols=6), int(rng.integers(0, 5)), int(rng.integers(0, 40)))
                    for _ in range(int(rng.integers(1, 4)))] for split in ("train", "test")}
    if ext == ".npz":
        arrays = {}
        for split, items in data.items():
            arrays[f"{split}_points"] = np.stack([p for p, _, _ in items])
            arrays[f"{split}_labels"] = np.array([lab for _, lab, _ in items])
            arrays[f"{split}_classes"] = np.array([c for _, _, c in items])
        return {"5way_10shot/0.npz": _npz_bytes(arrays, rng)}
    return {"5way_10shot/0.pkl": pickle.dumps(data, protocol=int(rng.integers(2, 6)))}


def read_fewshot_pkl(root: str, path: str):
    from easydict import EasyDict

    from datasets.ModelNetDatasetFewShot import ModelNetFewShot

    ds = ModelNetFewShot(EasyDict(DATA_PATH=root, N_POINTS=N_POINTS, NUM_CATEGORY=40, USE_NORMALS=False,
                                  subset="train", way=5, shot=10, fold=0))
    return [ds[i] for i in range(len(ds))]


def check_fewshot_pkl(items) -> Optional[str]:
    for _, _, (points, label) in items:
        problem = _points_ok(points.numpy(), (None, 3))
        if problem or not 0 <= label < 5:
            return problem or f"label {label} outside 0..4"
    return None


def make_modelnet_txt(rng: np.random.Generator, ext: str) -> Files:
    rows = _cloud(rng, cols=6)
    return {"airplane_0001.txt": "".join(",".join(f"{v:.6f}" for v in r) + "\n" for r in rows).encode()}


def read_modelnet_txt(root: str, path: str):
    from datasets.modelnet_cache import read_modelnet_txt as read

    return read(path)


def check_modelnet_txt(result) -> Optional[str]:
    return _points_ok(result, (None, 6))


def _h5_bytes(rng: np.random.Generator, labels_2d: bool, n_classes: int) -> Tuple[bytes, Dict[str, Optional[bytes]]]:
    import h5py

    n, p = int(rng.integers(1, 4)), int(rng.integers(N_POINTS, 2 * N_POINTS))
    side: Dict[str, Optional[bytes]] = {}
    buf = io.BytesIO()
    variant = int(rng.integers(0, 6))
    with h5py.File(buf, "w") as f:
        data = rng.normal(size=(n, p, 3)).astype(np.float32)
        if variant == 1:
            f.create_dataset("data", data=data, chunks=True, compression="gzip")
        elif variant == 2:  # declared far larger than stored: nothing written, the fill value everywhere
            f.create_dataset("data", shape=(40000, 2048, 3), dtype="f4", chunks=(1, 2048, 3))
            side[TAMPERED] = b""
        elif variant == 3:  # external storage: a file beside it (a FIFO names the hang)
            name = str(rng.choice(["raw.bin", "fifo.bin"]))
            side[name] = None if name == "fifo.bin" else data.tobytes()
            side[TAMPERED] = b""
            f.create_dataset("data", shape=data.shape, dtype="f4", external=[(name, 0, data.nbytes)])
        else:
            f.create_dataset("data", data=data.astype(rng.choice([np.float32, np.float64])))
        labels = rng.integers(0, n_classes, size=(n, 1) if labels_2d else (n,))
        f.create_dataset("label", data=labels.astype(rng.choice([np.int64, np.uint8, np.int32])))
        if variant == 4:
            f.create_dataset("mask", data=np.zeros((n, p), dtype=np.int8))
    return buf.getvalue(), side


def make_scanobjectnn_h5(rng: np.random.Generator, ext: str) -> Files:
    main, side = _h5_bytes(rng, labels_2d=False, n_classes=15)
    return {"training_objectdataset.h5": main, **side}


def read_scanobjectnn_h5(root: str, path: str):
    from datasets.ScanObjectNNDataset import read_h5

    return read_h5(path)


def make_modelnet_h5(rng: np.random.Generator, ext: str) -> Files:
    main, side = _h5_bytes(rng, labels_2d=bool(rng.random() < 0.5), n_classes=40)
    return {"ply_data_train0.h5": main, **side}


def read_modelnet_h5(root: str, path: str):
    from datasets.ModelNetH5Dataset import read_modelnet_h5 as read

    return read(path)


def check_h5(result) -> Optional[str]:
    points, labels = result
    problem = _points_ok(points, (None, None, 3))
    if problem:
        return problem
    if labels.shape != (points.shape[0],):
        return f"labels {labels.shape} for {points.shape[0]} clouds"
    return None


def make_shapenet55_npy(rng: np.random.Generator, ext: str) -> Files:
    return {"shapenet_pc/02691156-a1.npy": _npy_bytes(_cloud(rng).astype(rng.choice([np.float32, np.float64]))),
            "ShapeNet-55/train.txt": b"02691156-a1.npy\n"}


def read_shapenet55_npy(root: str, path: str):
    from easydict import EasyDict

    from datasets.ShapeNet55Dataset import ShapeNet

    ds = ShapeNet(EasyDict(DATA_PATH=os.path.join(root, "ShapeNet-55"), PC_PATH=os.path.join(root, "shapenet_pc"),
                           N_POINTS=N_POINTS, subset="train", npoints=N_POINTS))
    return ds[0]


def check_shapenet55_npy(item) -> Optional[str]:
    return _points_ok(item[2].numpy(), (N_POINTS, 3))


def make_shapenetpart_txt(rng: np.random.Generator, ext: str) -> Files:
    pts = _cloud(rng, cols=6)
    parts = rng.integers(0, 50, size=len(pts))
    return {"02691156/a1.txt": "".join(" ".join(f"{v:.6f}" for v in r) + f" {k}\n" for r, k in zip(pts, parts)).encode()}


def read_shapenetpart_txt(root: str, path: str):
    from datasets.ShapeNetPartDataset import load_shape_file

    return load_shape_file(path)


def check_shapenetpart_txt(result) -> Optional[str]:
    return _points_ok(result, (None, 7))


def make_shapenetpart_categories(rng: np.random.Generator, ext: str) -> Files:
    from datasets.ShapeNetPartDataset import CATEGORIES

    sep = str(rng.choice(["\t", " ", "  "]))
    return {"synsetoffset2category.txt": "".join(f"{c}{sep}0{2691156 + i}\n" for i, c in enumerate(CATEGORIES)).encode()}


def read_shapenetpart_categories(root: str, path: str):
    from datasets.ShapeNetPartDataset import read_category_file

    return read_category_file(root)


def make_shapenetpart_split(rng: np.random.Generator, ext: str) -> Files:
    entries = [f"shape_data/0269115{int(rng.integers(0, 9))}/t{i}" for i in range(int(rng.integers(0, 6)))]
    return {"train_test_split/shuffled_train_file_list.json": json.dumps(entries).encode()}


def read_shapenetpart_split(root: str, path: str):
    from datasets.ShapeNetPartDataset import read_split_file

    return read_split_file(root, "train")


def check_pairs(result) -> Optional[str]:
    ok = isinstance(result, list) and all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) for s in p)
                                          for p in result)
    return None if ok else f"returned {result!r:.80}, expected a list of (synset, token)"


def make_folder_split(rng: np.random.Generator, ext: str) -> Files:
    names = [f"chair/c{i}.ply" for i in range(int(rng.integers(0, 5)))]
    k = int(rng.integers(0, len(names) + 1))
    return {"split.json": json.dumps({"train": names[:k], "test": names[k:]}, indent=1).encode()}


def read_folder_split(root: str, path: str):
    from datasets.PointCloudFolder import read_split_file

    return read_split_file(path, root)


def check_folder_split(result) -> Optional[str]:
    ok = isinstance(result, dict) and all(isinstance(result.get(s), list) and all(isinstance(n, str) for n in result[s])
                                          for s in ("train", "test"))
    return None if ok else f"returned {result!r:.80}, expected lists of names 'train' and 'test'"


def make_labelled(rng: np.random.Generator, ext: str) -> Files:
    """A valid point file with a part label per point (a segmentation folder's), in format ``ext``."""
    pts = _cloud(rng)
    labels = rng.integers(0, 5, size=len(pts))
    if ext == ".ply":
        fmt = str(rng.choice(["ascii", "binary_little_endian", "binary_big_endian"]))
        name, typ = str(rng.choice(["label", "scalar_Label", "part"])), str(rng.choice(["int", "uchar", "float"]))
        head = ["ply", f"format {fmt} 1.0", f"element vertex {len(pts)}", "property float x", "property float y",
                "property float z", f"property {typ} {name}", "end_header"]
        header = ("\n".join(head) + "\n").encode("ascii")
        if fmt == "ascii":
            return {"parts.ply": header + "".join(f"{x:.6g} {y:.6g} {z:.6g} {v}\n"
                                                  for (x, y, z), v in zip(pts, labels)).encode("ascii")}
        endian = "<" if fmt == "binary_little_endian" else ">"
        code = {"int": "i4", "uchar": "u1", "float": "f4"}[typ]
        rec = np.empty(len(pts), dtype=[("x", endian + "f4"), ("y", endian + "f4"), ("z", endian + "f4"),
                                        (name, endian + code)])
        for i, axis in enumerate("xyz"):
            rec[axis] = pts[:, i]
        rec[name] = labels
        return {"parts.ply": header + rec.tobytes()}
    if ext in (".txt", ".csv"):
        sep = "," if ext == ".csv" else " "
        head = "x,y,z,label\n" if ext == ".csv" else ""
        rows = "".join(sep.join([f"{v:.6g}" for v in row] + [str(lab)]) + "\n" for row, lab in zip(pts, labels))
        return {"parts" + ext: (head + rows).encode("utf-8")}
    if ext == ".npy":
        return {"parts.npy": _npy_bytes(np.concatenate([pts, labels[:, None].astype(np.float32)], axis=1))}
    return {"parts.npz": _npz_bytes({"points": pts, "labels": labels.astype(np.int32)}, rng)}


def read_labelled(root: str, path: str):
    from datasets.labelled_io import read_labelled_file

    return read_labelled_file(path)


def check_labelled(result) -> Optional[str]:
    if not (isinstance(result, tuple) and len(result) == 2):
        return f"returned {type(result).__name__}, expected (points, labels)"
    points, labels = result
    problem = _points_ok(points, (None, 3), np.float64) or _points_ok(labels, (None,), np.int64)
    if problem is None and len(points) != len(labels):
        problem = f"returned {len(points)} points and {len(labels)} labels"
    return problem


def make_part_names(rng: np.random.Generator, ext: str) -> Files:
    """A segmentation folder's ``labels.txt``: a part name per line, or lines ``<id> <name>``."""
    names = [str(rng.choice(["base", "pole", "shade", "top", "leg"])) + str(i) for i in range(int(rng.integers(1, 6)))]
    numbered = bool(rng.random() < 0.5)
    return {"labels.txt": "".join(f"{i} {n}\n" if numbered else f"{n}\n" for i, n in enumerate(names)).encode()}


def read_part_names(root: str, path: str):
    from datasets.PartSegFolder import read_part_names as read

    return read(os.path.dirname(path))


def check_part_names(result) -> Optional[str]:
    ok = isinstance(result, list) and result and all(isinstance(n, str) for n in result) and len(set(result)) == len(result)
    return None if ok else f"returned {result!r:.80}, expected a list of distinct names"


def make_view_png(rng: np.random.Generator, ext: str) -> Files:
    from PIL import Image

    size = int(rng.integers(4, 24))
    mode = str(rng.choice(["RGBA", "RGB", "L", "P"]))
    img = Image.fromarray(rng.integers(0, 256, size=(size, size, 4), dtype=np.uint8), "RGBA").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"rendering/00.png": buf.getvalue()}


def read_view_png(root: str, path: str):
    from datasets.views import load_view

    return [load_view(path, 16, alpha) for alpha in ("white", "drop")]


def check_view_png(result) -> Optional[str]:
    for view in result:
        arr = view.numpy()
        problem = _points_ok(arr, (3, 16, 16))
        if problem or arr.min() < 0 or arr.max() > 1:
            return problem or f"values {arr.min()}..{arr.max()} outside [0, 1]"
    return None


# ---------------------------------------------------------------------------------- configs
CONFIG_JOBS = {"pretrain": "pretrain", "finetune": "finetune", "fewshot": "finetune"}
_CONFIGS = sorted(p for p in (REPO / "cfgs").glob("*.yaml"))


def make_config(rng: np.random.Generator, ext: str) -> Files:
    """A repository config (its ``_base_`` entries resolve against the repository), or one of the
    shapes that once made the loader recurse or explode: an include cycle, nested aliases."""
    variant = rng.random()
    if variant < 0.1:  # an include cycle through the file itself
        return {"config.yaml": b"_base_: config.yaml\nmodel: {NAME: Point_MAE}\n", TAMPERED: b"cycle"}
    if variant < 0.2:  # nested aliases (each level refers to the previous one several times)
        depth, width = int(rng.integers(2, 9)), int(rng.integers(2, 10))
        lines = ["a0: &a0 [" + ", ".join(["'xxxxxxxxxx'"] * width) + "]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
        return {"config.yaml": ("\n".join(lines) + f"\nmodel: *a{depth - 1}\n").encode(), TAMPERED: b"aliases"}
    path = _CONFIGS[int(rng.integers(0, len(_CONFIGS)))]
    return {"config.yaml": f"# job: {job_of(path.name)}\n".encode() + path.read_bytes()}


def job_of(name: str) -> str:
    return next((job for key, job in CONFIG_JOBS.items() if key in name), "finetune")


def read_config(root: str, path: str):
    from datasets import DATASETS
    from engine.svm import expand_svm_section
    from models import MODELS
    from utils.overrides import load_config
    from utils.validate import validate_config

    first = ""
    if os.path.isfile(path):  # (a FIFO is the loader's to refuse, not this harness's to block on)
        with open(path, "rb") as f:
            first = f.readline(200).decode("utf-8", errors="replace")
    job = "pretrain" if "pretrain" in first else "finetune"
    config = load_config(path, (), None, MODELS, DATASETS, expand=expand_svm_section)
    validate_config(config, job, MODELS, DATASETS)
    return config


def check_config(result) -> Optional[str]:
    from easydict import EasyDict

    return None if isinstance(result, EasyDict) and "model" in result else f"returned {type(result).__name__}"


# ------------------------------------------------------------------------------- checkpoints
TINY_MODEL = dict(NAME="PointTransformer", trans_dim=16, depth=1, drop_path_rate=0.0, cls_dim=3, num_heads=2,
                  group_size=8, num_group=4, encoder_dims=16, patch_embed="inter_mae")
_STATE: Dict[str, Any] = {}


def _tiny_state_dict() -> Dict[str, Any]:
    if "sd" not in _STATE:
        import torch
        from easydict import EasyDict

        from models import build_model_from_cfg

        torch.manual_seed(0)
        _STATE["sd"] = build_model_from_cfg(EasyDict(TINY_MODEL)).state_dict()
    return _STATE["sd"]


def _run_config(rng: np.random.Generator, tampered: list) -> Dict[str, Any]:
    model = dict(TINY_MODEL)
    entry = {"_base_": {"NAME": "PointCloudFolder", "DATA_PATH": "data/x", "N_POINTS": 64, "labels": True},
             "others": {"subset": "test", "npoints": 32}}
    config = {"model": model, "npoints": 32, "dataset": {"test": entry}}
    for _ in range(int(rng.integers(0, 3))):  # a value of the kind a tampered file would change
        key, value = [("trans_dim", 16384), ("depth", 10 ** 6), ("num_group", 2 ** 31), ("cls_dim", 7),
                      ("group_size", -1), ("num_heads", 0), ("NAME", "Point_MAE"), ("encoder_dims", "16"),
                      ("trans_dim", 1e300), ("depth", None)][int(rng.integers(0, 10))]
        model[key] = value
        tampered.append(key)
    if rng.random() < 0.2:
        entry["_base_"]["N_POINTS"] = [2_000_000_000, -5, "many", 1e10][int(rng.integers(0, 4))]
        tampered.append("N_POINTS")
    return config


def _class_names(rng: np.random.Generator, tampered: list) -> Any:
    if rng.random() < 0.7:
        return ["chair", "table", "lamp"]
    tampered.append("class_names")
    return [["chair"], "ab", ["a", "b"], [1, 2, 3], ["a", "a", "b"], None, {}][int(rng.integers(0, 7))]


def make_checkpoint(rng: np.random.Generator, ext: str) -> Files:
    import torch

    sd = dict(_tiny_state_dict())
    tampered: list = []
    if rng.random() < 0.1:  # a tensor of another shape
        key = sorted(sd)[int(rng.integers(0, len(sd)))]
        sd[key] = torch.zeros(2, 2)
        tampered.append(key)
    if ext == ".safetensors":
        from safetensors.torch import save

        names = _class_names(rng, tampered)
        meta = {"class_names": json.dumps(names)} if names is not None else None
        files = {"model.safetensors": save({k: v.contiguous() for k, v in sd.items()}, metadata=meta),
                 "model.json": json.dumps(_run_config(rng, tampered)).encode()}
    else:
        key = str(rng.choice(["base_model", "model", "state_dict", "model_state_dict"]))
        ckpt = {key: sd, "config": _run_config(rng, tampered), "epoch": int(rng.integers(0, 300)),
                "class_names": _class_names(rng, tampered)}
        if rng.random() < 0.3:
            ckpt["rng"] = np.random.get_state()[1][:8]
            ckpt["metrics"] = {"acc": np.float64(91.5)}
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        files = {"ckpt-best.pth": buf.getvalue()}
    if tampered:
        files[TAMPERED] = ", ".join(tampered).encode()
    return files


def make_model_folder(rng: np.random.Generator, ext: str) -> Files:
    """A model folder (tools/export_weights.py --hf): config.json and model.safetensors; ``ext``
    picks the file that the mutations hit (it comes first)."""
    from safetensors.torch import save

    tampered: list = []
    config = _run_config(rng, tampered)
    data = {"model_type": "inter-mae", "format_version": 1, "architectures": ["PointTransformer"],
            "task": "classification", "class_names": _class_names(rng, tampered),
            "preprocessing": {"N_POINTS": 64, "npoints": 32, "sample_seed": 0, "normalization": "unit_sphere",
                              "sampling": "fps"},
            "config": config, "metrics": {"acc": 91.5}, "best_metrics": {"acc": 91.5, "epoch": 3,
                                                                         "per_class_acc": {"chair": 90.0}},
            "epoch": 3, "command": ["python main.py --config cfgs/finetune_folder.yaml"], "version": "0.1.0"}
    weights = save({k: v.contiguous() for k, v in _tiny_state_dict().items()}, metadata={"format": "pt"})
    files = {"mine/config.json": json.dumps(data).encode(), "mine/model.safetensors": weights}
    if ext == ".safetensors":
        files = dict(reversed(list(files.items())))
    if tampered:
        files[TAMPERED] = ", ".join(tampered).encode()
    return files


def read_model_folder(root: str, path: str):
    from engine.predict import Predictor

    return Predictor.from_pretrained(os.path.dirname(path), device="cpu")


def read_checkpoint(root: str, path: str):
    from engine.predict import Predictor

    return Predictor.from_checkpoint(path, device="cpu")


def check_checkpoint(predictor) -> Optional[str]:
    names = predictor.class_names
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        return f"class names {names!r:.80}"
    most = float(os.environ.get("INTERMAE_MAX_POINTS", "inf"))
    if not 0 < predictor.n_points <= most or not 0 < predictor.npoints <= predictor.n_points:
        return (f"accepted N_POINTS {predictor.n_points} / npoints {predictor.npoints} (points limit "
                f"$INTERMAE_MAX_POINTS = {most:g}): every file read would allocate that many points")
    return None


# ------------------------------------------------------------------ the harness's own check
def read_selftest(root: str, path: str):
    """A file saying what to do: ``sleep S``, ``alloc MiB``, ``raise`` or ``exit``."""
    import time

    with open(path) as f:
        verb, _, arg = f.read().partition(" ")
    if verb == "sleep":
        time.sleep(float(arg))
    elif verb == "alloc":
        return np.ones(int(arg) * 2 ** 17)  # float64: arg MiB
    elif verb == "raise":
        raise KeyError(arg)
    elif verb == "exit":
        os._exit(3)
    return np.zeros((N_POINTS, 3), np.float32)


# -------------------------------------------------------------------------------------- table
def _targets() -> Dict[str, Target]:
    from datasets.ModelNetDatasetFewShot import LAYOUT as FEWSHOT_LAYOUT
    from datasets.ModelNetH5Dataset import LAYOUT as MODELNET_H5_LAYOUT
    from datasets.ScanObjectNNDataset import LAYOUT as SCAN_LAYOUT
    from datasets.ShapeNet55Dataset import LAYOUT as SHAPENET_LAYOUT

    readme = ("See docs/data.md (or run `make data` for the embedded demo data).",)
    table = [
        Target("cloud-ply", "cloud.ply", (".ply",), make_cloud, read_cloud, check_cloud),
        Target("cloud-text", "cloud.xyz", (".xyz", ".txt", ".pts", ".csv"), make_cloud, read_cloud, check_cloud, text=True),
        Target("cloud-npy", "cloud.npy", (".npy",), make_cloud, read_cloud, check_cloud),
        Target("cloud-npz", "cloud.npz", (".npz",), make_cloud, read_cloud, check_cloud),
        Target("cloud-off", "cloud.off", (".off",), make_cloud, read_cloud, check_cloud, text=True, slow=True),
        Target("cloud-obj", "cloud.obj", (".obj",), make_cloud, read_cloud, check_cloud, text=True, slow=True),
        Target("cloud-stl", "cloud.stl", (".stl",), make_cloud, read_cloud, check_cloud, slow=True),
        Target("features-points", "cloud.ply", (".ply", ".npy", ".npz", ".xyz", ".obj"), make_cloud, read_points_file,
               check_points),
        Target("modelnet-dat", "modelnet40_train_32pts_fps.dat", (".dat", ".npz"), make_modelnet_dat, read_modelnet_dat,
               check_modelnet_dat),
        Target("fewshot-pkl", "5way_10shot/0.pkl", (".pkl", ".npz"), make_fewshot_pkl, read_fewshot_pkl, check_fewshot_pkl,
               layout=tuple(FEWSHOT_LAYOUT.splitlines()) + readme),
        Target("modelnet-txt", "airplane_0001.txt", (".txt",), make_modelnet_txt, read_modelnet_txt,
               check_modelnet_txt, text=True),
        Target("scanobjectnn-h5", "training_objectdataset.h5", (".h5",), make_scanobjectnn_h5, read_scanobjectnn_h5,
               check_h5, layout=tuple(SCAN_LAYOUT.splitlines()) + readme),
        Target("modelnet-h5", "ply_data_train0.h5", (".h5",), make_modelnet_h5, read_modelnet_h5, check_h5,
               layout=tuple(MODELNET_H5_LAYOUT.splitlines()) + readme),
        Target("shapenet55-npy", "shapenet_pc/02691156-a1.npy", (".npy",), make_shapenet55_npy, read_shapenet55_npy,
               check_shapenet55_npy, layout=tuple(SHAPENET_LAYOUT.splitlines()) + readme),
        Target("shapenetpart-txt", "02691156/a1.txt", (".txt",), make_shapenetpart_txt, read_shapenetpart_txt,
               check_shapenetpart_txt, text=True),
        Target("shapenetpart-categories", "synsetoffset2category.txt", (".txt",), make_shapenetpart_categories,
               read_shapenetpart_categories, check_pairs, text=True),
        Target("shapenetpart-split", "train_test_split/shuffled_train_file_list.json", (".json",),
               make_shapenetpart_split, read_shapenetpart_split, check_pairs, text=True),
        Target("folder-split", "split.json", (".json",), make_folder_split, read_folder_split, check_folder_split,
               text=True),
        Target("labelled-points", "parts.ply", (".ply", ".txt", ".csv", ".npy", ".npz"), make_labelled,
               read_labelled, check_labelled),
        Target("part-names", "labels.txt", (".txt",), make_part_names, read_part_names, check_part_names,
               text=True),
        Target("view-png", "rendering/00.png", (".png",), make_view_png, read_view_png, check_view_png),
        Target("config", "config.yaml", (".yaml",), make_config, read_config, check_config, text=True, slow=True),
        Target("checkpoint-pth", "ckpt-best.pth", (".pth",), make_checkpoint, read_checkpoint, check_checkpoint,
               slow=True, report_lines=True),
        Target("checkpoint-safetensors", "model.safetensors", (".safetensors",), make_checkpoint, read_checkpoint,
               check_checkpoint, slow=True, report_lines=True),
        Target("model-folder", "mine/config.json", (".json", ".safetensors"), make_model_folder, read_model_folder,
               check_checkpoint, text=True, slow=True, report_lines=True, folder=True),
        Target("selftest", "do.txt", (".txt",), lambda rng, ext: {"do.txt": b"ok"}, read_selftest, check_cloud),
    ]
    return {t.name: t for t in table}


_TABLE: Dict[str, Target] = {}


def targets() -> Dict[str, Target]:
    """Every target by name (built on first use: the layouts come from the dataset modules)."""
    if not _TABLE:
        _TABLE.update(_targets())
    return _TABLE


TARGET_NAMES = ("cloud-ply", "cloud-text", "cloud-npy", "cloud-npz", "cloud-off", "cloud-obj", "cloud-stl",
                "features-points", "modelnet-dat", "fewshot-pkl", "modelnet-txt", "scanobjectnn-h5", "modelnet-h5",
                "shapenet55-npy", "shapenetpart-txt", "shapenetpart-categories", "shapenetpart-split", "folder-split",
                "labelled-points", "part-names", "view-png", "config", "checkpoint-pth", "checkpoint-safetensors",
                "model-folder")


def crc(data: bytes) -> str:
    """A short name for a file's content (the name of a saved finding)."""
    return f"{zlib.crc32(data):08x}{len(data):x}"


__all__ = ["Target", "targets", "TARGET_NAMES", "N_POINTS", "TAMPERED", "crc"]
