"""Faithful protocols: what the released code does, against independent references.

* initialisation: xavier-uniform decoder (bounds and std from the Glorot formula), PyTorch's
  default ranges (+-1/sqrt(fan_in)) in the classifier and segmenter, trunc-normal(0.02) behind
  ``init: trunc_normal`` (the golden losses of both modes: tests/test_golden.py);
* epochs: ``max_epoch + 1`` epochs (the released ``range(start_epoch, max_epoch + 1)``), validation
  after epochs ``val_freq, 2 val_freq, ...``; the one-epoch lag of ``lr_schedule: released`` against
  timm's ``CosineLRScheduler`` driven as the released loop drives it;
* voting: the released thresholds, ``ckpt-best_vote.pth``, the best of ``voting.repeats`` runs;
* the linear-SVM protocol on ``modelnet40_ply_hdf5_2048`` files written here in the released layout;
* few-shot data from the 8192-point caches, few-shot ``--test`` on the full ModelNet40 test split;
* the image branch: per-view batches, no normalisation, alpha dropped, the released config;
* pre-training validation skipped with one log line when its data is absent.

FPS's skip rule (points near the origin, as the pointnet2_ops kernel) is checked on hand-made clouds
in tests/test_fps_backends.py (``test_hand_made_line_and_tie_rule``, ``test_hand_made_ball_edge``).
"""
from __future__ import annotations

import math
import re

import h5py
import numpy as np
import pytest
import torch
from easydict import EasyDict
from PIL import Image
from torch import nn

import main as main_module
from datasets import build_dataset_from_cfg
from datasets.common import DatasetFormatError
from datasets.io import write_ply
from engine import builder, finetune
from engine.engine import validation_due
from models import build_model_from_cfg
from models.image_encoder import ImageBranch
from models.Inter_MAE import Inter_MAE
from models.PartSegTransformer import PartSegTransformer
from utils.checkpoint import load_checkpoint_file
from utils.config import ConfigError, cfg_from_yaml_file
from utils.validate import check_values, check_voting
from utils.settings import RunSettings, epochs_to_run
from writers import TINY_FINETUNE, TINY_TC, write_modelnet

REPO_CFGS = __import__("pathlib").Path(__file__).resolve().parent.parent / "cfgs"


def run_main(*argv: str) -> None:
    main_module.main([*argv, "--num_workers", "0", "--device", "cpu"])


def pretrain_cfg(init=None, width=64):
    cfg = EasyDict(NAME="Inter_MAE", group_size=8, num_group=8, loss="cdl2", transformer_config=EasyDict(
        TINY_TC, trans_dim=width, encoder_dims=width, decoder_embed_dim=width, decoder_depth=2))
    if init is not None:
        cfg.init = init
    return cfg


def classifier_cfg(init=None):
    cfg = EasyDict(NAME="PointTransformer", trans_dim=32, depth=1, drop_path_rate=0.0, cls_dim=40, num_heads=2,
                   group_size=8, num_group=8, encoder_dims=32)
    if init is not None:
        cfg.init = init
    return cfg


# ------------------------------------------------------------------------------ initialisation
def test_pretraining_decoder_is_xavier_uniform():
    torch.manual_seed(0)
    model = Inter_MAE(pretrain_cfg())
    linears = [m for m in model.MAE_decoder.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 4  # qkv, proj, fc1, fc2 per block
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot & Bengio: U(-a, a), a = sqrt(6 / (in + out))
        w = lin.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.1)  # std of U(-a, a)
        assert lin.bias is None or not lin.bias.any()
    norms = [m for m in model.MAE_decoder.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(torch.all(n.weight == 1) and not n.bias.any() for n in norms)
    # the encoder keeps trunc-normal(0.02), as the released MaskTransformer._init_weights
    qkv = model.MAE_encoder.blocks.blocks[0].attn.qkv.weight
    assert qkv.std().item() == pytest.approx(0.02, rel=0.1)

    torch.manual_seed(0)
    earlier = Inter_MAE(pretrain_cfg("trunc_normal"))
    for lin in (m for m in earlier.MAE_decoder.modules() if isinstance(m, nn.Linear)):
        assert lin.weight.std().item() == pytest.approx(0.02, rel=0.15)


def _default_bound(layer) -> float:
    """PyTorch's default Linear / Conv1d init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias too."""
    fan_in = layer.weight[0].numel()
    return 1.0 / math.sqrt(fan_in)


def test_classifier_keeps_pytorch_default_init():
    torch.manual_seed(0)
    model = build_model_from_cfg(classifier_cfg())
    first = model.pos_embed[0]  # Linear(3, 128): weights and biases in +-1/sqrt(3) = +-0.577
    assert _default_bound(first) == pytest.approx(0.57735, abs=1e-5)
    for layer in (first, model.cls_head_finetune[0], model.cls_head_finetune[8], model.blocks.blocks[0].mlp.fc1):
        bound = _default_bound(layer)
        for t in (layer.weight, layer.bias):
            assert t.abs().max() <= bound and t.abs().max() > 0.5 * bound
    assert first.weight.std().item() == pytest.approx(0.57735 / math.sqrt(3.0), rel=0.2)
    for token in (model.cls_token, model.cls_pos):  # trunc-normal(0.02) in the release too
        assert 0 < token.abs().max() < 0.1
    torch.manual_seed(0)
    earlier = build_model_from_cfg(classifier_cfg("trunc_normal"))
    assert earlier.pos_embed[0].weight.std().item() == pytest.approx(0.02, rel=0.3)
    assert not earlier.pos_embed[0].bias.any() and not earlier.cls_head_finetune[0].bias.any()


def test_segmenter_keeps_pytorch_default_init():
    torch.manual_seed(0)
    model = PartSegTransformer(trans_dim=32, depth=3, num_heads=2, num_group=8, group_size=8)
    for layer in (model.convs1, model.convs3, model.pos_embed[0], model.propagation_0.mlp_convs[0]):
        bound = _default_bound(layer)
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound and layer.bias.any()
    earlier = PartSegTransformer(trans_dim=32, depth=3, num_heads=2, num_group=8, group_size=8, init="trunc_normal")
    assert not earlier.convs1.bias.any() and earlier.convs1.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_bad_init_is_named():
    with pytest.raises(ConfigError, match=r"model\.init: 'xavier'.*released.*trunc_normal"):
        build_model_from_cfg(classifier_cfg("xavier"))
    with pytest.raises(ConfigError, match="'kaiming'"):
        PartSegTransformer(trans_dim=32, depth=3, num_heads=2, num_group=8, group_size=8, init="kaiming")


# ------------------------------------------------------------------------------ epochs, schedule
def test_epoch_count_and_validation_rule():
    assert epochs_to_run(300, "released") == 301  # len(range(0, 300 + 1))
    assert epochs_to_run(300, "exact") == 300
    with pytest.raises(ConfigError, match="'epoch_count' = 'all'"):
        check_values(EasyDict(max_epoch=3, epoch_count="all"), "finetune")
    released = [e for e in range(0, 10 + 1) if e % 3 == 0 and e != 0]  # runner_finetune.run_net
    settings = RunSettings(job="finetune", experiment_path="", tfboard_path=None, log_name="t", config_path="",
                           n_epochs=11, epoch_count="released", val_freq=3)
    assert [e for e in range(11) if validation_due(e, settings)] == released == [3, 6, 9]
    exact = settings.replace(epoch_count="exact", n_epochs=10)
    assert [e for e in range(10) if validation_due(e, exact)] == [2, 5, 8, 9]  # and the last epoch


def test_lagged_schedule_equals_timm_driven_as_released():
    from timm.scheduler import CosineLRScheduler

    def released_lrs(epochs, warmup, max_epoch):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
        # the released tools/builder.py:build_opti_sche arguments (timm 1.0 names t_mul / decay_rate
        # cycle_mul / cycle_decay)
        sched = CosineLRScheduler(opt, t_initial=epochs, cycle_mul=1, lr_min=1e-6, cycle_decay=0.1, warmup_lr_init=1e-6,
                                  warmup_t=warmup, cycle_limit=1, t_in_epochs=True)
        lrs = []
        for epoch in range(0, max_epoch + 1):  # the released loop: train, then scheduler.step(epoch)
            lrs.append(opt.param_groups[0]["lr"])
            sched.step(epoch)
        return lrs

    def ours(epochs, warmup, mode, n):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = builder.apply_lr_schedule(builder.CosineEpochScheduler(opt, epochs=epochs, initial_epochs=warmup), mode)
        lrs = []
        for epoch in range(n):  # engine.fit: scheduler.step(epoch), then train
            sched.step(epoch)
            lrs.append(opt.param_groups[0]["lr"])
        return lrs

    for epochs, warmup in ((30, 3), (12, 0)):
        n = epochs_to_run(epochs, "released")
        assert ours(epochs, warmup, "released", n) == pytest.approx(released_lrs(epochs, warmup, epochs), rel=1e-9)
        # without the lag, epoch e trains at what the released loop uses for epoch e + 1
        assert ours(epochs, warmup, "exact", n) == pytest.approx(released_lrs(epochs, warmup, epochs + 1)[1:], rel=1e-9)


def _finetune_config(tmp_path, epochs, extra=""):
    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 8), ("test", 6)), n_rows=130, cache_points=96)
    cfg = tmp_path / "ft.yaml"
    text = TINY_FINETUNE.format(root=tmp_path / "mn", epochs=epochs).replace("epoch_count: exact\n", "")
    cfg.write_text(text + extra)
    return cfg


def test_released_epoch_count_and_voting_through_main(tmp_path):
    cfg = _finetune_config(tmp_path, epochs=2, extra="voting: {above: -1.0, times: 2, repeats: 3}\n")
    root = str(tmp_path / "exp")
    run_main("--config", str(cfg), "--scratch_model", "--vote", "--val_freq", "2", "--exp_name", "v", "--experiment_root", root)
    exp = tmp_path / "exp" / "ft" / "v"
    log = next(exp.glob("*.log")).read_text()
    assert "epochs: 3 (epoch_count: released, max_epoch 2)" in log
    assert load_checkpoint_file(str(exp / "ckpt-last.pth"))["epoch"] == 2  # epochs 0, 1, 2
    assert re.findall(r"\[Validation\] EPOCH: (\d+) ", log) == ["2"]  # 2 % 2 == 0 and != 0; not 0 (nor 1)
    votes = [float(v) for v in re.findall(r"\[Validation_vote\] EPOCH: \d+  acc_vote = ([0-9.]+)", log)]
    best_vote = load_checkpoint_file(str(exp / "ckpt-best_vote.pth"))
    assert len(votes) == 1 and best_vote["best_metrics"]["acc_vote"] == pytest.approx(votes[0], abs=1e-4)
    assert best_vote["epoch"] == 2

    run_main("--config", str(cfg), "--test", "--vote", "--ckpts", str(exp / "ckpt-last.pth"), "--exp_name", "v",
             "--experiment_root", root)
    log = next((tmp_path / "exp" / "ft" / "test_v").glob("*.log")).read_text()
    runs = [float(a) for a in re.findall(r"\[TEST_VOTE_time \d+\]  acc = ([0-9.]+)", log)]
    reported = float(log.split("[TEST_VOTE] voting accuracy")[1].split(") =")[1].split("%")[0])
    assert len(runs) == 3 and reported == pytest.approx(max(runs), abs=1e-4)


def test_vote_thresholds_are_the_released_ones():
    cfg = finetune.voting_config(EasyDict())
    assert cfg == {"times": 10, "repeats": 299, "above": 92.1, "above_if_best": 91.0}
    # metrics.acc > 92.1 or (better and metrics.acc > 91)
    assert finetune.vote_due(92.2, 99.0, cfg)  # above 92.1 even when not better
    assert not finetune.vote_due(92.0, 99.0, cfg)  # between 91 and 92.1, not better
    assert finetune.vote_due(91.5, 91.2, cfg)  # better and above 91
    assert not finetune.vote_due(90.9, 10.0, cfg)  # better but not above 91
    with pytest.raises(ConfigError, match="voting.repeats"):  # checked when the config is loaded
        check_voting(EasyDict(voting=EasyDict(repeats=0)))


# ------------------------------------------------------------------------------------ SVM, h5
def write_modelnet_h5(root, files, n_points=40, seed=0):
    """``ply_data_<subset><i>.h5`` as PointNet's release: data (n, P, 3) float32, label (n, 1) uint8."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, labels in files.items():
        data = rng.normal(size=(len(labels), n_points, 3)).astype(np.float32)
        with h5py.File(root / name, "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=np.asarray(labels, dtype=np.uint8).reshape(-1, 1))
        written[name] = (data, np.asarray(labels))
    return written


def h5_dataset(root, subset, npoints=16, **extra):
    return build_dataset_from_cfg(EasyDict(NAME="ModelNet40SVM", DATA_PATH=str(root), **extra),
                                  dict(subset=subset, npoints=npoints))


def test_h5_loader_reads_the_released_layout(tmp_path):
    files = {"ply_data_train1.h5": [2, 8, 5], "ply_data_train0.h5": [1, 0], "ply_data_test0.h5": [12, 3, 35, 39]}
    written = write_modelnet_h5(tmp_path / "h5", files)
    train = h5_dataset(tmp_path / "h5", "train")
    assert len(train) == 5
    expected = [(d, l) for name in ("ply_data_train0.h5", "ply_data_train1.h5") for d, l in zip(*written[name])]
    for i, (cloud, label) in enumerate(expected):
        name, tag, (points, y) = train[i]
        assert points.dtype == torch.float32 and points.shape == (16, 3)
        assert np.array_equal(points.numpy(), cloud[:16]) and int(y) == label  # first 16 points, unnormalised
    ten = h5_dataset(tmp_path / "h5", "test", NUM_CATEGORY=10)  # ModelNet10 classes keep their ModelNet40 labels
    assert [int(ten[i][2][1]) for i in range(len(ten))] == [12, 35]


def test_h5_loader_errors_name_file_and_layout(tmp_path):
    with pytest.raises(DatasetFormatError, match="nowhere"):
        h5_dataset(tmp_path / "nowhere", "train")
    write_modelnet_h5(tmp_path / "h5", {"ply_data_test0.h5": [1]})
    with pytest.raises(DatasetFormatError, match=r"no 'ply_data_train\*\.h5' file"):
        h5_dataset(tmp_path / "h5", "train")
    with pytest.raises(DatasetFormatError, match="fewer than npoints=64"):
        h5_dataset(tmp_path / "h5", "test", npoints=64)
    with h5py.File(tmp_path / "h5" / "ply_data_train0.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((2, 40, 3), np.float32))
    with pytest.raises(DatasetFormatError, match=r"ply_data_train0\.h5: HDF5 key 'label' missing"):
        h5_dataset(tmp_path / "h5", "train")
    (tmp_path / "h5" / "ply_data_train0.h5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetFormatError, match="not a readable HDF5 file"):
        h5_dataset(tmp_path / "h5", "train")


def test_svm_tool_runs_the_released_protocol(tmp_path, capsys):
    from sklearn.svm import LinearSVC

    from tools import svm as svm_tool

    rng = np.random.default_rng(1)
    labels = {"ply_data_train0.h5": list(rng.integers(0, 3, 12)), "ply_data_test0.h5": list(rng.integers(0, 3, 6))}
    write_modelnet_h5(tmp_path / "h5", labels, n_points=48)
    cfg = tmp_path / "pre.yaml"
    cfg.write_text("model: {NAME: Inter_MAE, group_size: 8, num_group: 8, loss: cdl2, transformer_config: "
                   "{mask_ratio: 0.5, mask_type: rand, trans_dim: 32, encoder_dims: 32, depth: 2, drop_path_rate: 0.1, "
                   "num_heads: 2, decoder_embed_dim: 16, decoder_depth: 1, decoder_num_heads: 2}}\n"
                   "svm_validation: {train: {others: {npoints: 32}}, test: {others: {npoints: 32}}}\n")
    torch.manual_seed(0)
    model = Inter_MAE(cfg_from_yaml_file(str(cfg)).model).eval()
    torch.save({"base_model": model.state_dict(), "epoch": 7}, tmp_path / "pre.pth")
    acc = svm_tool.main(["--config", str(cfg), "--ckpts", str(tmp_path / "pre.pth"), "--svm_root", str(tmp_path / "h5"),
                         "--num_workers", "0", "--device", "cpu"])
    # independent: the first 32 points of each file cloud, max ++ mean of the unmasked encoder tokens,
    # the released LinearSVC() (C = 1.0, dual coordinate descent, 1000 iterations)
    feats = {}
    for subset in ("train", "test"):
        with h5py.File(tmp_path / "h5" / f"ply_data_{subset}0.h5") as f:
            pts, y = torch.from_numpy(f["data"][:, :32]), f["label"][:, 0]
        with torch.no_grad():
            nb, ct = model.group_divider(pts)
            tok, _ = model.MAE_encoder(nb, ct, noaug=True)
        feats[subset] = (torch.cat([tok.max(1).values, tok.mean(1)], 1).numpy(), y)
    svm = LinearSVC(C=1.0, dual=True, max_iter=1000, random_state=0).fit(*feats["train"])
    expected = float((svm.predict(feats["test"][0]) == feats["test"][1]).mean())
    assert acc == pytest.approx(expected * 100, abs=1e-6)
    assert "[Validation] EPOCH: 7  acc = %.4f" % expected in capsys.readouterr().out


# ---------------------------------------------------------------------------------- few-shot
def test_fewshot_data_and_test_split_as_released(monkeypatch, tmp_path):
    from tools import make_fewshot

    seen = []
    monkeypatch.setattr(make_fewshot, "load_modelnet_cache", lambda root, split, n: seen.append((split, n)) or ([], []))
    monkeypatch.setattr(make_fewshot, "make_fewshot_splits", lambda *a, **k: [])
    make_fewshot.main(["--cache_root", str(tmp_path), "--out", str(tmp_path / "fs")])
    assert seen == [("train", 8192), ("test", 8192)]  # generate_few_shot_data.py: the 8192-point caches
    cfg = cfg_from_yaml_file(REPO_CFGS / "fewshot.yaml")
    assert cfg.dataset.test._base_.NAME == "ModelNet" and cfg.dataset.test.others.subset == "test"
    assert cfg.dataset.val._base_.NAME == "ModelNetFewShot"


# ------------------------------------------------------------------------------- image branch
TINY_VIT = dict(model="vit_tiny_patch16_224", model_kwargs=dict(img_size=32, depth=1, embed_dim=48, num_heads=2))


def test_per_view_batches_as_released():
    torch.manual_seed(0)
    branch = ImageBranch(**TINY_VIT).train()
    imgs = torch.rand(4, 2, 3, 32, 32)
    got = branch(imgs)
    # the released loop: img_head(imgs[0]) + img_head(imgs[1]) ..., divided by the number of views
    by_view = sum(branch.inv_head(branch.encoder(branch.preprocess(imgs[:, v]))) for v in range(2)) / 2
    torch.testing.assert_close(got, by_view)
    branch.per_view = False  # one batch of B*V: other BatchNorm statistics in training mode
    assert not torch.allclose(branch(imgs), got, atol=1e-4)
    branch.eval()
    joint = branch(imgs)
    branch.per_view = True
    torch.testing.assert_close(branch(imgs), joint)  # the same in eval mode (running statistics)


def test_unnormalised_images_and_alpha_dropped(tmp_path):
    branch = ImageBranch(**TINY_VIT, normalize=False)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(branch.preprocess(x), x)
    normalised = ImageBranch(**TINY_VIT)
    torch.testing.assert_close(normalised.preprocess(x), (x - 0.5) / 0.5)  # timm's 0.5 / 0.5, not ImageNet's

    synset, model = "90000001", "s0"
    rng = np.random.default_rng(0)
    (tmp_path / "ShapeNet" / synset).mkdir(parents=True)
    write_ply(str(tmp_path / "ShapeNet" / synset / f"{model}.ply"), rng.normal(size=(2048, 3)).astype(np.float32))
    folder = tmp_path / "ShapeNetRendering" / synset / model / "rendering"
    folder.mkdir(parents=True)
    rgba = np.zeros((137, 137, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 255
    rgba[:20, :20] = (0, 0, 255, 0)  # transparent corner whose stored RGB is blue
    for v in range(24):
        Image.fromarray(rgba, "RGBA").save(folder / f"{v:02d}.png")
    base = EasyDict(NAME="ShapeNetRender", DATA_PATH=str(tmp_path), N_POINTS=2048)
    views = {alpha: build_dataset_from_cfg(base, dict(subset="train", npoints=64, n_imgs=1, IMG_SIZE=137,
                                                      IMG_ALPHA=alpha))[0][2]["imgs"][0] for alpha in ("drop", "white")}
    assert torch.equal(views["drop"][:, 5, 5], torch.tensor([0.0, 0.0, 1.0]))  # convert('RGB'): alpha dropped
    assert torch.equal(views["white"][:, 5, 5], torch.ones(3))  # composited on white
    torch.testing.assert_close(views["drop"][:, 80, 80], torch.tensor([0.0, 200 / 255, 0.0]))
    resized = build_dataset_from_cfg(base, dict(subset="train", npoints=64, n_imgs=1, IMG_ALPHA="drop"))[0][2]["imgs"]
    expected = np.asarray(Image.open(folder / "00.png").convert("RGB").resize((224, 224), Image.BILINEAR)) / 255.0
    torch.testing.assert_close(resized[0], torch.from_numpy(expected).float().permute(2, 0, 1))
    with pytest.raises(DatasetFormatError, match="IMG_ALPHA"):
        build_dataset_from_cfg(base, dict(subset="train", npoints=64, n_imgs=1, IMG_ALPHA="black"))


def test_released_config_builds_the_released_image_branch(monkeypatch):
    from datasets import DATASETS
    from models import MODELS
    from utils.validate import validate_config

    monkeypatch.chdir(REPO_CFGS.parent)
    cfg = cfg_from_yaml_file(REPO_CFGS / "pretrain_released.yaml")
    validate_config(cfg, "pretrain", MODELS, DATASETS)
    assert (cfg.epoch_count, cfg.lr_schedule, cfg.model.init) == ("released", "released", "released")
    assert cfg.dataset.train.others.IMG_ALPHA == "drop" and cfg.dataset.train.others.n_imgs == 1
    branch = ImageBranch.from_config(cfg.model.image_branch)
    assert branch.encoder is None and branch.inv_head is None and not branch.normalize and branch.per_view
    vit, inv_head = branch.build_fresh(torch.device("cpu"))
    # timm 0.4.5's vit_small_patch16_224: 768 wide, 8 blocks, 8 heads, MLP 3x, no qkv bias
    assert (vit.num_features, len(vit.blocks), vit.blocks[0].attn.num_heads) == (768, 8, 8)
    assert vit.blocks[0].attn.qkv.bias is None and vit.blocks[0].mlp.fc1.out_features == 2304
    assert inv_head[0].in_features == 768 and inv_head[-1].out_features == 256


# ----------------------------------------------------------------------- pre-training validation
def test_pretraining_skips_absent_validation_data_with_one_line(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        (tmp_path / "snr" / "ShapeNet" / "90000000").mkdir(parents=True, exist_ok=True)
        write_ply(str(tmp_path / "snr" / "ShapeNet" / "90000000" / f"m{i}.ply"), rng.normal(size=(300, 3)).astype(np.float32))
    cfg = tmp_path / "pre.yaml"
    entry = "{{_base_: cfgs/dataset_configs/ShapeNetRender.yaml, others: {{subset: {s}, npoints: 128, n_imgs: 0, " \
            "N_POINTS: 256, DATA_PATH: " + str(tmp_path / "snr") + "}}}}"
    cfg.write_text(f"""optimizer: {{type: AdamW, kwargs: {{lr: 0.001, weight_decay: 0.05}}}}
scheduler: {{type: CosLR, kwargs: {{epochs: 1, initial_epochs: 0}}}}
dataset: {{train: {entry.format(s='train')}, val: {entry.format(s='test, split: file')}}}
model: {{NAME: Inter_MAE, group_size: 8, num_group: 8, loss: cdl2, transformer_config: {{mask_ratio: 0.5, mask_type: rand,
  trans_dim: 32, encoder_dims: 32, depth: 1, drop_path_rate: 0.0, num_heads: 2, decoder_embed_dim: 16, decoder_depth: 1,
  decoder_num_heads: 2}}}}
npoints: 128
total_bs: 4
max_epoch: 1
""")  # released count: epochs 0 and 1, validation after epoch 1 (epoch % val_freq == 0 and epoch != 0)
    run_main("--config", str(cfg), "--exp_name", "skip", "--experiment_root", str(tmp_path / "exp"))
    log = next((tmp_path / "exp" / "pre" / "skip").glob("*.log")).read_text()
    skipped = [ln for ln in log.splitlines() if "[Validation] skipped" in ln]
    assert len(skipped) == 1 and "test.txt" in skipped[0]
    assert "val_loss_rec" not in log
    assert load_checkpoint_file(str(tmp_path / "exp" / "pre" / "skip" / "ckpt-last.pth"))["epoch"] == 1  # 0..max_epoch
    (tmp_path / "snr" / "test.txt").write_text("90000000/m0\n90000000/m1\n")
    run_main("--config", str(cfg), "--exp_name", "val", "--experiment_root", str(tmp_path / "exp"))
    log = next((tmp_path / "exp" / "pre" / "val").glob("*.log")).read_text()
    assert "[Validation] skipped" not in log and "val_loss_rec" in log
