"""Files that made a reader fail with a traceback, hang, or print an endless or multi-line error,
each found by fuzzing (tests/test_fuzz_readers.py) and fixed: each is now one InputError line
naming the file."""
from __future__ import annotations

import json
import os
import pickle
import signal

import numpy as np
import pytest
from easydict import EasyDict

from utils.cli import InputError


def one_line_naming(error: BaseException, name: str) -> str:
    text = str(error)
    assert isinstance(error, InputError), type(error)
    assert "\n" not in text and name in text, text
    return text


def test_a_yaml_syntax_error_is_one_line_with_its_line_and_column(tmp_path):
    from utils.config import cfg_from_yaml_file

    path = tmp_path / "cfg.yaml"
    path.write_text("model: {NAME: Point_MAE}\noptimizer: 'AdamW\n")
    with pytest.raises(InputError) as e:
        cfg_from_yaml_file(str(path))
    text = one_line_naming(e.value, "cfg.yaml")
    assert f'found unexpected end of stream in "{path}", line 3, column 1 (while scanning a quoted scalar at line 2' in text


def test_a_ply_header_line_of_60_kb_is_quoted_short(tmp_path):
    from datasets.io import load_cloud_file

    path = tmp_path / "long.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\n" + b"[" * 60000 + b"\nend_header\n")
    with pytest.raises(InputError) as e:
        load_cloud_file(str(path), 8)
    text = one_line_naming(e.value, "long.ply")
    assert "(+59940 bytes)" in text and len(text) < 400


def test_a_value_beyond_float32_is_a_bad_row_not_an_inf_point(tmp_path):
    from datasets.io import load_cloud_file

    path = tmp_path / "big.npy"
    pts = np.zeros((10, 3))
    pts[4, 1] = 1e300  # finite in float64, Inf in the float32 points returned
    np.save(path, pts)
    with pytest.raises(InputError) as e:
        load_cloud_file(str(path), 8)
    assert "non-finite value at row 4 of the array" in one_line_naming(e.value, "big.npy")


@pytest.mark.parametrize("content", [b"\x93NUMPY\x01\x00", None], ids=["truncated", "pickled"])
def test_a_shapenet55_npy_that_is_truncated_or_pickled_names_the_file(tmp_path, content):
    from datasets.ShapeNet55Dataset import ShapeNet

    (tmp_path / "ShapeNet-55").mkdir()
    (tmp_path / "shapenet_pc").mkdir()
    (tmp_path / "ShapeNet-55" / "train.txt").write_text("02691156-a.npy\n")
    path = tmp_path / "shapenet_pc" / "02691156-a.npy"
    if content is None:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    ds = ShapeNet(EasyDict(DATA_PATH=str(tmp_path / "ShapeNet-55"), PC_PATH=str(tmp_path / "shapenet_pc"),
                           N_POINTS=8, subset="train", npoints=8))
    with pytest.raises(InputError) as e:
        ds[0]
    one_line_naming(e.value, "02691156-a.npy")


def test_shapenetpart_files_that_are_not_utf8_or_nested_too_deep(tmp_path):
    from datasets.ShapeNetPartDataset import read_category_file, read_split_file

    (tmp_path / "train_test_split").mkdir()
    split = tmp_path / "train_test_split" / "shuffled_train_file_list.json"
    for content in (b"\x80\x81[]", b"[" * 100000):
        split.write_bytes(content)
        with pytest.raises(InputError) as e:
            read_split_file(str(tmp_path), "train")
        one_line_naming(e.value, "shuffled_train_file_list.json")
    (tmp_path / "synsetoffset2category.txt").write_bytes(b"\xff\xfe" + b"x" * 5000 + b" y z\n")
    with pytest.raises(InputError) as e:
        read_category_file(str(tmp_path))
    assert len(one_line_naming(e.value, "synsetoffset2category.txt")) < 400


def test_shape_files_with_inf_or_nan_name_the_file(tmp_path):
    from datasets.modelnet_cache import read_modelnet_txt
    from datasets.ShapeNetPartDataset import load_shape_file

    txt = tmp_path / "chair_0001.txt"
    txt.write_text("0,0,0,0,0,1\n1e999,0,0,0,0,1\n")
    with pytest.raises(InputError) as e:
        read_modelnet_txt(str(txt))
    one_line_naming(e.value, "chair_0001.txt")
    part = tmp_path / "token.txt"
    part.write_text("0 0 0 0 0 1 3\nnan 0 0 0 0 1 3\n")
    with pytest.raises(InputError) as e:
        load_shape_file(str(part))
    assert "row 1" in one_line_naming(e.value, "token.txt")


def test_a_fewshot_item_after_the_first_is_checked_at_load(tmp_path):
    from datasets.ModelNetDatasetFewShot import ModelNetFewShot

    good = (np.zeros((16, 6), np.float32), 1, 7)
    for bad in ((np.zeros(16, np.float32), 1, 7), (np.full((16, 6), np.nan, np.float32), 1, 7),
                (np.zeros((16, 6), np.float32), "two", 7)):
        (tmp_path / "5way_10shot").mkdir(exist_ok=True)
        (tmp_path / "5way_10shot" / "0.pkl").write_bytes(pickle.dumps({"train": [good, bad], "test": [good]}))
        with pytest.raises(InputError) as e:
            ModelNetFewShot(EasyDict(DATA_PATH=str(tmp_path), N_POINTS=16, NUM_CATEGORY=40, USE_NORMALS=False,
                                     subset="train", way=5, shot=10, fold=0))
        assert "[train][1]" in one_line_naming(e.value, "0.pkl")


def test_a_modelnet40_h5_cloud_with_nan_names_the_file(tmp_path):
    import h5py

    from datasets.ModelNetH5Dataset import read_modelnet_h5

    path = tmp_path / "ply_data_train0.h5"
    data = np.zeros((2, 8, 3), np.float32)
    data[1, 5, 2] = np.nan
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, np.zeros((2, 1), np.int64)
    with pytest.raises(InputError) as e:
        read_modelnet_h5(str(path))
    assert "cloud 1" in one_line_naming(e.value, "ply_data_train0.h5")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_a_fifo_in_place_of_a_split_file_or_a_view_is_refused_not_waited_on(tmp_path, request):
    from datasets.PointCloudFolder import read_split_file
    from datasets.views import load_view

    def blocked(signum, frame):
        raise AssertionError("the reader waited on the FIFO")

    split, view = tmp_path / "split.json", tmp_path / "00.png"
    os.mkfifo(split)
    os.mkfifo(view)
    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    request.addfinalizer(lambda: (signal.alarm(0), signal.signal(signal.SIGALRM, previous)))
    with pytest.raises(InputError) as e:
        read_split_file(str(split), str(tmp_path))
    one_line_naming(e.value, "split.json")
    with pytest.raises(InputError) as e:
        load_view(str(view), 16)
    one_line_naming(e.value, "00.png")
    split.unlink()
    split.write_text(json.dumps({"train": [1, 2], "test": []}))
    with pytest.raises(InputError) as e:
        read_split_file(str(split), str(tmp_path))
    one_line_naming(e.value, "split.json")


@pytest.mark.parametrize("signature", [b"HEAP", b"SNOD"])
def test_an_hdf5_file_with_a_damaged_structure_names_the_file(tmp_path, signature):
    import io

    import h5py

    from datasets.ModelNetH5Dataset import read_modelnet_h5
    from datasets.ScanObjectNNDataset import read_h5

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["data"], f["label"] = np.zeros((2, 8, 3), np.float32), np.zeros(2, np.int64)
    damaged = buf.getvalue().replace(signature, b"X" + signature[1:])  # h5py: RuntimeError, bad ... signature
    for name, read in (("training_objectdataset.h5", read_h5), ("ply_data_train0.h5", read_modelnet_h5)):
        (tmp_path / name).write_bytes(damaged)
        with pytest.raises(InputError) as e:
            read(str(tmp_path / name))
        first = str(e.value).split("\n")[0]  # (ModelNet40's HDF5 errors append the folder layout)
        assert name in first and "signature" in first


def test_a_damaged_deflate_stream_in_a_cache_npz_names_the_file(tmp_path):
    import io
    import struct

    from datasets.modelnet_cache import load_cache

    buf = io.BytesIO()
    np.savez_compressed(buf, points=np.zeros((3, 32, 6), np.float32), labels=np.zeros((3, 1), np.int32))
    data = bytearray(buf.getvalue())
    name_len, extra_len = struct.unpack("<HH", data[26:30])
    data[30 + name_len + extra_len] = 0x07  # the first deflate block of the reserved type: zlib.error
    (tmp_path / "modelnet40_train_32pts_fps.npz").write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        load_cache(str(tmp_path / "modelnet40_train_32pts_fps.dat"), 32)
    assert "invalid block type" in one_line_naming(e.value, "modelnet40_train_32pts_fps.npz")


def test_a_base_name_too_long_for_the_file_system_is_not_found(tmp_path):
    from utils.config import cfg_from_yaml_file

    path = tmp_path / "cfg.yaml"
    path.write_text("dataset: {train: {_base_: cfgs/dataset_configs/" + "9" * 5000 + ".yaml, others: {}}}\n")
    with pytest.raises(InputError) as e:
        cfg_from_yaml_file(str(path))
    assert "not found" in one_line_naming(e.value, "cfg.yaml")


def test_a_checkpoint_config_that_breaks_the_model_build_is_one_line(tmp_path):
    import torch

    from engine.predict import Predictor
    from models import build_model_from_cfg

    model = dict(NAME="PointTransformer", trans_dim=16, depth=1, drop_path_rate=0.0, cls_dim=3, num_heads=2,
                 group_size=8, num_group=4, encoder_dims=16, patch_embed="inter_mae")
    state = build_model_from_cfg(EasyDict(model)).state_dict()
    entry = {"_base_": {"NAME": "PointCloudFolder", "DATA_PATH": "data", "N_POINTS": 64, "labels": True},
             "others": {"subset": "test", "npoints": 32}}
    config = {"model": {**model, "drop_path_rate": None}, "npoints": 32, "dataset": {"test": entry}}
    torch.save({"base_model": state, "config": config, "class_names": ["a", "b", "c"]}, tmp_path / "ckpt.pth")
    with pytest.raises(InputError) as e:  # torch's TypeError for linspace(0, None) spans many lines
        Predictor.from_checkpoint(str(tmp_path / "ckpt.pth"), device="cpu")
    one_line_naming(e.value, "ckpt.pth")


def test_a_config_key_that_is_not_a_name_is_one_line(tmp_path):
    from utils.config import cfg_from_yaml_file

    path = tmp_path / "cfg.yaml"
    path.write_text("optimizer: {type: AdamW, kwargs: {0.0005, weight_decay: 0.05}}\n")  # the lr's key lost
    with pytest.raises(InputError) as e:  # was a TypeError from EasyDict: attribute name must be string
        cfg_from_yaml_file(str(path))
    assert "key 0.0005 is a float" in one_line_naming(e.value, "cfg.yaml")
