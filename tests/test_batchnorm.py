"""BatchNorm statistics that match the weights (engine/batchnorm.py): the rule that says which
models are recalibrated, checked against hand computation; the recalibration against a NumPy
average of the batches; the random streams and the training losses untouched; the config key."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from engine.batchnorm import INITIAL_SHARE_LIMIT, initial_share, recalibrate, recalibrate_if_needed, stale_batchnorms
from utils.validate import check_values
from utils.misc import rng_state, set_rng_state
from utils.schema import ConfigError


def bn_with(updates: int, running_var: float, channels: int = 4, momentum=0.1) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(channels, momentum=momentum)
    bn.num_batches_tracked.fill_(updates)
    bn.running_var.fill_(running_var)
    return bn


def test_initial_share_is_the_residual_weight_over_the_running_variance():
    # 0.9^48 = exp(48 ln 0.9) = exp(-5.0573) = 0.0063627; / 0.0064 = 0.99417: the patch-embedding layer after 48 updates
    assert initial_share(0.1, 48, 0.0064) == pytest.approx(math.exp(48 * math.log(0.9)) / 0.0064, rel=1e-12)
    assert initial_share(0.1, 48, 0.0064) == pytest.approx(0.99417, abs=1e-5)
    assert initial_share(0.1, 0, 0.5) == 2.0  # nothing forgotten yet
    assert initial_share(None, 1, 1e-6) == 0.0  # a cumulative average forgets at its first update
    assert INITIAL_SHARE_LIMIT == 0.01


# (updates n, mean running variance v, stale?): stale when 0.9^n / v > 0.01, worked out by hand
CASES = [
    (48, 0.0064, True),  # the short fine-tuning run: 0.9^48 / 0.0064 = 0.994
    (144, 2.3e-5, True),  # 0.9^144 = exp(-15.172) = 2.58e-7; / 2.3e-5 = 0.0112
    (146, 2.3e-5, False),  # 0.9^146 = 2.09e-7; / 2.3e-5 = 0.0091
    (144, 1e-3, False),  # ScanObjectNN OBJ_BG at its first validation (2 epochs of 2309 // 32 = 72 updates): 2.6e-4
    (307, 2.3e-5, False),  # one epoch of ModelNet40 (9843 // 32 = 307 updates): 0.9^307 = 9.3e-15
    (356, 2.3e-5, False),  # one epoch of ScanObjectNN PB_T50_RS (11416 // 32)
    (0, 1.0, False),  # never updated: not used by the forward in training
]


@pytest.mark.parametrize("updates,var,stale", CASES)
def test_which_layers_are_stale(updates, var, stale):
    model = nn.Sequential(bn_with(updates, var))
    assert bool(stale_batchnorms(model)) == stale
    assert (updates > 0 and (0.9 ** updates) / var > 0.01) == stale  # the hand rule itself


def test_the_limit_for_unit_variance_is_44_updates():
    # 0.9^43 = 0.01077 > 0.01 >= 0.9^44 = 0.00970
    assert [n for n in range(1, 100) if stale_batchnorms(nn.Sequential(bn_with(n, 1.0)))] == list(range(1, 44))


def test_pretrained_layers_and_cumulative_averages_are_trusted():
    encoder = bn_with(300 * 410, 2.3e-5)  # loaded from a 300-epoch pre-training (410 updates an epoch)
    head = bn_with(1000, 0.3)
    cumulative = bn_with(3, 1e-6, momentum=None)
    model = nn.Sequential(encoder, head, cumulative)
    assert stale_batchnorms(model) == []
    head.num_batches_tracked.fill_(10)  # a new head after 10 steps: 0.9^10 / 0.3 = 1.16
    (only,) = stale_batchnorms(model)
    assert only.name == "1" and only.updates == 10 and only.share == pytest.approx(0.9 ** 10 / 0.3)


class Net(nn.Module):
    """Linear -> BatchNorm -> dropout -> Linear, and a BatchNorm the forward never uses."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5)
        self.bn = nn.BatchNorm1d(5)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(5, 2)
        self.unused = nn.BatchNorm1d(7)

    def forward(self, x):
        return self.out(self.drop(self.bn(self.fc(x))))


def batches(n=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [("ids", "names", (torch.randn(size, 3, generator=g) * 0.01, torch.zeros(size))) for _ in range(n)]


def forward(model, batch):
    return model(batch[2][0])


def test_recalibration_is_the_average_of_the_batch_statistics_and_touches_nothing_else():
    torch.manual_seed(0)
    model = Net()
    model.bn.num_batches_tracked.fill_(12)
    model.unused.running_mean.fill_(0.5)
    data = batches()
    with torch.no_grad():
        feats = [model.fc(b[2][0]).numpy().astype(np.float64) for b in data]
    before = rng_state()
    random_draw = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(before)

    used = recalibrate(model, data, forward, seed=3)

    assert used == len(data)
    assert (random.random(), np.random.rand(), torch.rand(1)) == random_draw  # every stream as it was
    # update_bn's cumulative average: the mean of the batch means and of the (unbiased) batch variances
    np.testing.assert_allclose(model.bn.running_mean.numpy(), np.mean([f.mean(0) for f in feats], 0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(model.bn.running_var.numpy(), np.mean([f.var(0, ddof=1) for f in feats], 0), rtol=1e-5)
    assert int(model.bn.num_batches_tracked) == 12  # still the training updates
    assert model.bn.momentum == 0.1 and model.training
    assert float(model.unused.running_mean[0]) == 0.5 and int(model.unused.num_batches_tracked) == 0


def test_recalibration_uses_at_most_max_batches_and_is_seeded():
    torch.manual_seed(0)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    assert recalibrate(a, batches(5), forward, seed=1, max_batches=2) == 2
    torch.rand(10)  # another RNG position: the same result
    recalibrate(b, batches(5)[:2], forward, seed=1)
    assert torch.equal(a.bn.running_var, b.bn.running_var)


def test_modes_auto_on_off():
    torch.manual_seed(0)
    model = Net()
    model.bn.num_batches_tracked.fill_(500)  # trusted: auto leaves it
    var = model.bn.running_var.clone()
    assert not recalibrate_if_needed(model, batches(), forward, "auto")
    assert not recalibrate_if_needed(model, batches(), forward, "off")
    assert torch.equal(model.bn.running_var, var)
    assert recalibrate_if_needed(model, batches(), forward, "on")
    assert not torch.equal(model.bn.running_var, var)
    model.bn.num_batches_tracked.fill_(5)
    model.bn.running_var.fill_(1.0)
    assert not recalibrate_if_needed(model, batches(), forward, "off")
    assert recalibrate_if_needed(model, batches(), forward, "auto")


@pytest.mark.parametrize("value,ok", [("auto", True), ("on", True), ("off", True), (True, True), (False, True),
                                      ("sometimes", False)])
def test_config_key_is_checked(value, ok):
    from easydict import EasyDict

    config = EasyDict(bn_recalibration=value)
    if ok:
        check_values(config, "finetune")
    else:
        with pytest.raises(ConfigError, match="'bn_recalibration' = 'sometimes': expected one of"):
            check_values(config, "finetune")


# ------------------------------------------------------------------------ a short run, end to end
def write_shapes(root, per_class):
    """``per_class`` {'train': n, 'test': m} .npy clouds of 2048 surface points of three separable shapes."""
    from test_folder import make_mesh, write_shape

    rng = np.random.default_rng(0)
    for part, n in per_class.items():
        for kind in ("ball", "plate", "stick"):
            (root / part / kind).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_shape(root / part / kind / f"s{i}", "npy", make_mesh(kind, rng), rng, n_cloud=2048)
    return root


def test_a_short_fine_tuning_run_is_evaluated_with_statistics_of_its_weights(tmp_path):
    """The full-size default models: pre-training for 1 epoch (1 step), then 12 fine-tuning steps at
    total_bs 8 (in the warm-up: the learning rates of the first 3 epochs of a 15-epoch run), after
    which the training accuracy is ~60 %. With BatchNorm statistics that still hold most of their
    initial unit variance every shape is evaluated as the same class (33.3 %). Validation, ``--test``
    and predict must agree and be well above chance."""
    import csv

    import main as main_module
    from tools import predict as predict_cmd
    from utils.checkpoint import load_checkpoint_file

    pytest.importorskip("trimesh")
    root = write_shapes(tmp_path / "shapes", {"train": 11, "test": 4})  # 4 steps an epoch at batch 8
    exp = tmp_path / "exp"
    common = ["--num_workers", "0", "--device", "cpu", "--experiment_root", str(exp)]
    main_module.main(["--config", "cfgs/pretrain_folder.yaml", "--exp_name", "p", "--data_root", str(root), *common,
                      "--opts", "max_epoch=1"])
    run = exp / "finetune_folder" / "f"
    main_module.main(["--config", "cfgs/finetune_folder.yaml", "--finetune_model", "--exp_name", "f",
                      "--ckpts", str(exp / "pretrain_folder" / "p" / "ckpt-last.pth"), "--data_root", str(root),
                      *common, "--opts", "max_epoch=3", "total_bs=8"])
    best = load_checkpoint_file(str(run / "ckpt-best.pth"))
    assert best["best_metrics"]["acc"] >= 200 / 3  # chance: 33.3 %; 12 test shapes
    assert int(best["base_model"]["encoder.first_conv.1.num_batches_tracked"]) <= 13  # few updates indeed
    tested = main_module.main(["--test", "--ckpts", str(run / "ckpt-best.pth"), *common])
    assert tested["acc"] == pytest.approx(best["best_metrics"]["acc"], abs=1e-6)  # the same 12 files
    out = tmp_path / "predictions.csv"
    assert predict_cmd.main(["--ckpts", str(run / "ckpt-best.pth"), "--input", str(root / "test"), "--out", str(out),
                             "--device", "cpu"]) == 0
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    assert 100.0 * sum(row["correct"] == "1" for row in rows) / len(rows) == pytest.approx(tested["acc"], abs=1e-6)
    assert len({row["predicted"] for row in rows}) >= 2


def test_recalibration_changes_the_saved_statistics_not_the_training(tmp_path, losses):
    """A tiny fine-tuning run through main.py with ``--bn_recalibration on`` and ``off``: the same
    training losses bit for bit (the recalibration draws from no training random stream), the same
    weights, and BatchNorm statistics that differ only where it ran."""
    import main as main_module
    from utils.checkpoint import load_checkpoint_file
    from writers import TINY_FINETUNE, write_modelnet

    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 8), ("test", 4)), n_rows=130, cache_points=96)
    cfg = tmp_path / "tiny_ft.yaml"
    cfg.write_text(TINY_FINETUNE.format(root=tmp_path / "mn", epochs=2))
    seen = losses  # the conftest fixture: values of the tensors .backward() is called on
    runs = {}
    for mode in ("on", "off"):
        seen.clear()
        main_module.main(["--config", str(cfg), "--scratch_model", "--exp_name", mode, "--bn_recalibration", mode,
                          "--num_workers", "0", "--device", "cpu", "--experiment_root", str(tmp_path / "exp")])
        runs[mode] = (list(seen), load_checkpoint_file(str(tmp_path / "exp" / "tiny_ft" / mode / "ckpt-last.pth")))
    (losses_on, on), (losses_off, off) = runs["on"], runs["off"]
    assert len(losses_on) == 4 and losses_on == losses_off
    assert on["rng_states"][0]["torch"].equal(off["rng_states"][0]["torch"])
    stats = [k for k in on["base_model"] if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not on["base_model"][k].equal(off["base_model"][k]) for k in stats)
    for key, value in on["base_model"].items():
        if key not in stats:
            assert value.equal(off["base_model"][key]), key  # weights and num_batches_tracked
