"""Sharing and deploying a trained model: the model folder (config.json, model.safetensors,
README.md) written by ``tools/export_weights.py --hf`` and read by every ``--ckpts``, a Hub model
id read offline from a folder laid out as the ``huggingface_hub`` cache, and the ONNX graph of
``tools/export_onnx.py`` on onnxruntime: the predictions (CSV) and features equal those of the
``.pth`` checkpoint (logits within 1e-4, the same classes)."""
from __future__ import annotations

import csv
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import datasets.PointCloudFolder as folder_module
import main as main_module
from engine.predict import Predictor
from models.PointTransformer import PointTransformer
from models.backbone import encoder_state_dict
from test_folder import N_POINTS, TINY_PRETRAIN_OPTS, write_folder
from test_predict import CLASSES, TINY
from tools import export_onnx, export_weights, extract_features
from tools import predict as predict_cmd
from utils.checkpoint import CheckpointError, load_checkpoint_file
from utils.cli import InputError

pytest.importorskip("trimesh")
onnxruntime = pytest.importorskip("onnxruntime", reason="the [deploy] extra (onnxruntime) is part of the test install")
pytest.importorskip("onnxscript", reason="the [deploy] extra (onnxscript) is part of the test install")


def run_main(*argv: str):
    return main_module.main([*argv, "--num_workers", "0", "--device", "cpu", "--no_progress"])


def read_csv(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A classifier fine-tuned for 4 epochs on a train/ test/ folder of three shapes, and a 1-epoch
    pre-training run on the same folder: (data root, classifier ckpt, pre-training ckpt, tmp)."""
    tmp = tmp_path_factory.mktemp("deploy")
    folder_module._SCANS.clear()
    root = write_folder(tmp / "shapes", split_dirs={"train": 8, "test": 4}, seed=3)
    exp = tmp / "exp"
    run_main("--config", "cfgs/finetune_folder.yaml", "--scratch_model", "--exp_name", "cls", "--data_root", str(root),
             "--experiment_root", str(exp), "--opts", *TINY, "max_epoch=4")
    run_main("--config", "cfgs/pretrain_folder.yaml", "--exp_name", "pre", "--data_root", str(root),
             "--experiment_root", str(exp), "--opts", *TINY_PRETRAIN_OPTS)
    return root, exp / "finetune_folder" / "cls" / "ckpt-best.pth", exp / "pretrain_folder" / "pre" / "ckpt-last.pth", tmp


@pytest.fixture(scope="module")
def folder(runs):
    _, cls_ckpt, _, tmp = runs
    out = tmp / "shared" / "mine"
    export_weights.main(["--ckpts", str(cls_ckpt), "--hf", str(out)])
    return out


@pytest.fixture(scope="module")
def onnx_files(runs):
    _, cls_ckpt, pre_ckpt, tmp = runs
    logits = export_onnx.main(["--ckpts", str(cls_ckpt), "--out", str(tmp / "onnx" / "mine.onnx"), "--verify",
                               str(runs[0] / "test")])
    feats = export_onnx.main(["--ckpts", str(pre_ckpt), "--features", "--out", str(tmp / "onnx" / "pre.onnx"),
                              "--npoints", "64"])
    return Path(logits["path"]), Path(feats["path"]), logits


def predict_csv(ckpts: str, inputs: Path, out: Path, *extra: str):
    code = predict_cmd.main(["--ckpts", ckpts, "--input", str(inputs), "--out", str(out), "--device", "cpu",
                             "--topk", "3", "--no_progress", *extra])
    assert code == 0
    return read_csv(out)


def test_model_folder_files_and_card(runs, folder):
    _, cls_ckpt, _, _ = runs
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    ckpt = load_checkpoint_file(str(cls_ckpt))
    assert config["model_type"] == "inter-mae" and config["task"] == "classification"
    assert config["class_names"] == CLASSES == ckpt["class_names"]
    assert config["preprocessing"] == {"N_POINTS": N_POINTS, "npoints": 64, "sample_seed": 0,
                                       "normalization": "unit_sphere", "sampling": "fps"}
    assert config["config"]["model"] == ckpt["config"]["model"]
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "library_name: inter-mae" in card
    logged = next(line for line in next(cls_ckpt.parent.glob("*.log")).read_text().splitlines() if " - Command: " in line)
    version = next(line for line in (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text().splitlines() if line.startswith("version"))
    for text in ("| 0 | ball |", "| 2 | stick |", f"| acc | {ckpt['best_metrics']['acc']:.2f} |",
                 f"--hf {folder}", "PointCloudFolder", "## Version and licence", logged.split(" - Command: ")[1],
                 f"version {version.split('=')[1].strip().strip(chr(34))}"):
        assert text in card, text
    assert config["command"] == ["python " + logged.split(" - Command: ")[1]]
    # the weights are the checkpoint's, read without unpickling
    folder_ckpt = load_checkpoint_file(str(folder))
    assert folder_ckpt["base_model"].keys() == ckpt["base_model"].keys()
    assert all(torch.equal(folder_ckpt["base_model"][k], v) for k, v in ckpt["base_model"].items())
    # a second export into the same folder is refused unless asked
    with pytest.raises(InputError, match="exists and is not empty"):
        export_weights.main(["--ckpts", str(cls_ckpt), "--hf", str(folder)])


def test_folder_predictions_equal_the_checkpoint(runs, folder, tmp_path):
    root, cls_ckpt, _, _ = runs
    from_pth = predict_csv(str(cls_ckpt), root / "test", tmp_path / "pth.csv")
    from_folder = predict_csv(str(folder), root / "test", tmp_path / "folder.csv")
    assert len(from_pth) == 12 and from_folder == from_pth
    predictor = Predictor.from_pretrained(str(folder), device="cpu")
    assert predictor.class_names == CLASSES and (predictor.n_points, predictor.npoints) == (N_POINTS, 64)


def hub_cache(cache: Path, repo_id: str, folder: Path, revisions=("main",)) -> str:
    """``folder`` laid out as huggingface_hub's cache holds a downloaded model: blobs, one snapshot
    per commit, refs/<revision> naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    (repo / "refs").mkdir()
    for rev in revisions:
        (repo / "refs" / rev).write_text(commit)
    return commit


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub offline with its cache in tmp_path; any socket connection fails the test."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def test_hub_id_loads_from_the_cache_offline(runs, folder, offline_hub, tmp_path):
    root, cls_ckpt, _, _ = runs
    commit = hub_cache(offline_hub, "someone/mine", folder, revisions=("main", "v1"))
    from_pth = predict_csv(str(cls_ckpt), root / "test", tmp_path / "pth.csv")
    from_hub = predict_csv("someone/mine", root / "test", tmp_path / "hub.csv")
    assert from_hub == from_pth
    for name, revision in (("someone/mine@v1", None), ("hf-hub:someone/mine", commit), ("someone/mine", "v1")):
        predictor = Predictor.from_pretrained(name, revision=revision, device="cpu")
        assert predictor.source.endswith(commit) and predictor.class_names == CLASSES
    from engine.features import load_point_encoder  # every --ckpts reads a Hub id: the features path too

    cloud = np.random.default_rng(0).normal(size=(1, 200, 3))
    np.testing.assert_array_equal(load_point_encoder("someone/mine", npoints=64).extract(cloud),
                                  load_point_encoder(str(folder), npoints=64).extract(cloud))
    with pytest.raises(InputError, match="'someone/other'.*Hugging Face Hub") as err:
        Predictor.from_pretrained("someone/other", device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="revision 'v2'"):
        Predictor.from_pretrained("someone/mine", revision="v2", device="cpu")


def test_bad_model_folders_are_one_line_errors(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text(encoding="utf-8"))
    cases = [({**config, "model_type": "bert"}, "'model_type' is 'bert'"),
             ({**config, "class_names": ["a", "a", "b"]}, "appears twice"),
             ({**config, "preprocessing": {**config["preprocessing"], "npoints": 80}}, "'preprocessing.npoints' is 80"),
             ({**config, "config": {**config["config"], "model": {**config["config"]["model"], "trans_dim": 48}}},
              "model.safetensors|trans_dim|shape")]
    for data, message in cases:
        (bad / "config.json").write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(InputError, match=message) as err:
            Predictor.from_pretrained(str(bad), device="cpu")
        assert "shape" in message or "\n" not in str(err.value)  # (a shape mismatch adds its table of shapes)
    (bad / "config.json").write_text(json.dumps(config).replace("64", "NaN", 1), encoding="utf-8")
    with pytest.raises(InputError, match="not JSON"):
        load_checkpoint_file(str(bad))
    (bad / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        load_checkpoint_file(str(bad))


def onnx_logits_and_torch_logits(onnx_path: Path, cls_ckpt: Path, files):
    from engine.finetune import fps_to
    from engine.onnx_runtime import OnnxGraph

    predictor = Predictor.from_checkpoint(str(cls_ckpt), device="cpu")
    pts = fps_to(torch.from_numpy(np.stack([predictor.read(f) for f in files])), predictor.npoints)
    with torch.no_grad():
        ref = predictor.model(pts).numpy()
    graph = OnnxGraph(str(onnx_path))
    return np.concatenate([graph.run(pts[i:i + 1]) for i in range(len(files))]), graph.run(pts), ref


def test_onnx_logits_equal_pytorch_on_the_test_files(runs, onnx_files, tmp_path):
    root, cls_ckpt, _, _ = runs
    files = sorted(str(p) for p in (root / "test").rglob("*") if p.is_file())
    one_by_one, batched, ref = onnx_logits_and_torch_logits(onnx_files[0], cls_ckpt, files)
    assert ref.shape == (12, 3)
    verified = onnx_files[2]  # export_onnx.py --verify on the same files
    assert verified["verify_files"] == 12 and verified["verify_same_class"] and verified["verify_max_abs_diff"] <= 1e-4
    for got in (one_by_one, batched):  # batch 1 and batch 12: one graph, dynamic batch
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
        assert (got.argmax(1) == ref.argmax(1)).all()
    from_pth = predict_csv(str(cls_ckpt), root / "test", tmp_path / "pth.csv")
    from_onnx = predict_csv(str(onnx_files[0]), root / "test", tmp_path / "onnx.csv", "--batch_size", "5")
    assert list(from_onnx[0]) == list(from_pth[0])  # the same columns
    assert len(from_onnx) == len(from_pth) == 12
    for a, b in zip(from_pth, from_onnx):
        assert (a["path"], a["predicted"], a["top_1"], a["true_class"]) == (b["path"], b["predicted"], b["top_1"],
                                                                             b["true_class"])
        assert abs(float(a["probability"]) - float(b["probability"])) < 1e-4


def test_onnx_predictor_builds_no_torch_model(runs, onnx_files, monkeypatch):
    from engine.onnx_runtime import OnnxPredictor

    root, _, _, _ = runs

    def refuse(self, *args, **kwargs):
        raise AssertionError("a PyTorch model was built")

    monkeypatch.setattr(PointTransformer, "__init__", refuse)
    predictor = OnnxPredictor.from_onnx(str(onnx_files[0]))
    results = predictor.predict(str(root / "test"), vote=2)
    assert predictor.model is None and len(results) == 12 and all(r.name in CLASSES for r in results)


def test_features_from_folder_and_onnx_equal_todays(runs, onnx_files, tmp_path):
    root, _, pre_ckpt, _ = runs
    enc_folder = tmp_path / "encoder"
    export_weights.main(["--ckpts", str(pre_ckpt), "--hf", str(enc_folder), "--encoder_only"])
    assert json.loads((enc_folder / "config.json").read_text())["task"] == "encoder"
    outs = {}
    for name, ckpts in (("pth", pre_ckpt), ("folder", enc_folder), ("onnx", onnx_files[1])):
        outs[name], names = extract_features.main(["--ckpts", str(ckpts), "--input", str(root / "test"), "--out",
                                                   str(tmp_path / f"{name}.npy"), "--npoints", "64", "--no_progress"])
        assert len(names) == 12
    assert outs["pth"].shape == (12, 64)
    np.testing.assert_array_equal(outs["folder"], outs["pth"])
    np.testing.assert_allclose(outs["onnx"], outs["pth"], rtol=0, atol=1e-4)


def test_pretrained_folder_fine_tunes(runs, tmp_path):
    """Both exports of a pre-training run (whole model, encoder only) give a classifier the
    encoder's weights, and ``main.py --finetune_model --ckpts FOLDER`` trains from one."""
    root, _, pre_ckpt, _ = runs
    whole = tmp_path / "pre"
    export_weights.main(["--ckpts", str(pre_ckpt), "--hf", str(whole)])
    data = json.loads((whole / "config.json").read_text())
    assert data["task"] == "pretraining" and data["class_names"] is None
    want = encoder_state_dict(load_checkpoint_file(str(pre_ckpt))["base_model"])
    ckpt = load_checkpoint_file(str(pre_ckpt))
    cfg = ckpt["config"]["model"]["transformer_config"]
    from easydict import EasyDict

    model = PointTransformer(EasyDict(NAME="PointTransformer", trans_dim=cfg["trans_dim"], depth=cfg["depth"],
                                      drop_path_rate=0.0, num_heads=cfg["num_heads"], group_size=8, num_group=8,
                                      encoder_dims=cfg["encoder_dims"], cls_dim=3))
    model.load_model_from_ckpt(str(whole))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in want.items())
    exp = tmp_path / "exp"
    run_main("--config", "cfgs/finetune_folder.yaml", "--finetune_model", "--ckpts", str(whole), "--exp_name", "ft",
             "--data_root", str(root), "--experiment_root", str(exp), "--opts", *TINY, "max_epoch=1",
             "model.depth=1")
    log = next((exp / "finetune_folder" / "ft").glob("*.log")).read_text()
    assert f"pretrain checkpoint {whole}: loaded {len(want)} tensors into the encoder" in log


def test_onnx_file_checks(runs, onnx_files, tmp_path):
    from engine.onnx_runtime import OnnxGraph, OnnxModelError, OnnxPredictor

    with pytest.raises(OnnxModelError, match="outputs features, not logits"):
        OnnxPredictor.from_onnx(str(onnx_files[1]))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(OnnxModelError, match=f"ONNX file '{junk}' could not be loaded") as err:
        OnnxGraph(str(junk))
    assert "\n" not in str(err.value)
    import onnx
    from onnx import TensorProto, helper

    other = tmp_path / "other.onnx"  # a valid graph of another shape and without the metadata
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(other))
    with pytest.raises(OnnxModelError, match=f"ONNX file '{other}': inputs \\[x tensor\\(float\\) \\[1, 4\\]\\]"):
        OnnxGraph(str(other))
    # an exported graph whose metadata was edited: checked as a config.json (points limit, class names)
    model = onnx.load(str(onnx_files[0]))
    entry = next(p for p in model.metadata_props if p.key == "inter_mae")
    meta = json.loads(entry.value)
    for change, message in (({"N_POINTS": 2_000_000_000}, "'preprocessing.N_POINTS' = 2000000000: too large"),
                            ({"npoints": -3}, "'preprocessing.npoints' is -3")):
        entry.value = json.dumps({**meta, "preprocessing": {**meta["preprocessing"], **change}})
        onnx.save(model, str(tmp_path / "edited.onnx"))
        with pytest.raises(InputError, match=message) as err:
            OnnxPredictor.from_onnx(str(tmp_path / "edited.onnx"))
        assert str(tmp_path / "edited.onnx") in str(err.value)
    code = None
    try:
        predict_cmd.main(["--ckpts", str(other), "--input", str(runs[0] / "test"), "--out", str(tmp_path / "p.csv")])
    except InputError as e:
        code = str(e)
    assert code is not None and str(other) in code


def test_without_the_deploy_extra_the_commands_say_what_to_install(runs, tmp_path, monkeypatch):
    import sys

    root, cls_ckpt, _, _ = runs
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    for module in ("onnxruntime", "onnx", "onnxscript"):
        monkeypatch.setitem(sys.modules, module, None)  # `import onnxruntime` raises ImportError
    for command, argv in ((export_onnx, ["--ckpts", str(cls_ckpt), "--out", str(tmp_path / "x.onnx")]),
                          (predict_cmd, ["--ckpts", str(onnx_file), "--input", str(root / "test"), "--out",
                                         str(tmp_path / "p.csv")])):
        with pytest.raises(InputError) as err:
            command.main(argv)
        assert "pip install -e '.[deploy]'" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "p.csv").exists()


def test_push_uploads_the_three_files_to_a_private_repository(folder, monkeypatch, tmp_path):
    """--push_to_hub goes through huggingface_hub's HfApi (no network here: a stand-in records the calls);
    a model folder exports again into a model folder."""
    import huggingface_hub

    copy = tmp_path / "copy"

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))
            return "https://huggingface.co/someone/mine/commit/0"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    export_weights.main(["--ckpts", str(folder), "--hf", str(copy), "--push_to_hub", "someone/mine"])
    assert json.loads((copy / "config.json").read_text())["command"] == json.loads((folder / "config.json").read_text())["command"]
    (create, repo, create_kw), (upload, repo2, upload_kw) = calls
    assert (create, repo, upload, repo2) == ("create_repo", "someone/mine", "upload_folder", "someone/mine")
    assert create_kw["private"] is True and create_kw["exist_ok"] is True
    assert upload_kw["folder_path"] == str(copy)
    card = (copy / "README.md").read_text(encoding="utf-8")
    assert "# someone/mine" in card and 'Predictor.from_pretrained("someone/mine")' in card
    assert sorted(upload_kw["allow_patterns"]) == ["README.md", "config.json", "model.safetensors"]


def test_accuracy_meter_per_class_against_numpy():
    """The per-class accuracy a fine-tuning run records (for the model card), against a numpy count."""
    from engine.engine import AccuracyMeter

    rng = np.random.default_rng(0)
    meter = AccuracyMeter(torch.device("cpu"))
    logits_all, labels_all = [], []
    for _ in range(4):
        logits, labels = rng.normal(size=(7, 5)), rng.integers(0, 4, size=7)  # class 4 never occurs
        meter.update(torch.from_numpy(logits), torch.from_numpy(labels))
        logits_all.append(logits)
        labels_all.append(labels)
    pred, labels = np.concatenate(logits_all).argmax(1), np.concatenate(labels_all)
    want = [100.0 * np.mean(pred[labels == c] == c) if (labels == c).any() else None for c in range(5)]
    got = meter.per_class()
    assert got[4] is None and want[4] is None
    np.testing.assert_allclose(got[:4], want[:4], rtol=0, atol=1e-9)
    assert meter.compute()["acc"] == pytest.approx(100.0 * np.mean(pred == labels))


def test_card_reports_the_runs_data_counts_and_per_class_accuracy(runs, folder):
    """A fine-tuning run records its data (per split: dataset, folder, subset, count) and the best
    validation's per-class accuracy in the checkpoint; the card shows them. The per-class figures
    are checked against the run's own --test files through the PyTorch predictor."""
    root, cls_ckpt, _, _ = runs
    ckpt = load_checkpoint_file(str(cls_ckpt))
    assert ckpt["data"]["train"]["count"] == 24 and ckpt["data"]["val"]["count"] == 12
    assert ckpt["data"]["train"]["dataset"] == "PointCloudFolder" and ckpt["data"]["val"]["subset"] == "test"
    assert ckpt["command"].split()[0].endswith(".py")
    per_class = ckpt["best_metrics"]["per_class_acc"]
    assert list(per_class) == CLASSES
    # the best epoch's validation set is test/: its per-class accuracy, counted from predictions
    # with the best checkpoint's weights, equals what the run recorded
    results = Predictor.from_checkpoint(str(cls_ckpt), device="cpu").predict(str(root / "test"))
    for name in CLASSES:
        mine = [r for r in results if r.true == name]
        assert per_class[name] == pytest.approx(100.0 * np.mean([r.name == name for r in mine]), abs=1e-9)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "| train | PointCloudFolder |" in card and "| 24 |" in card and "| 12 |" in card
    assert "Per-class accuracy of that validation (%):" in card and f"| ball | {per_class['ball']:.2f} |" in card
