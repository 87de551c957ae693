"""The shared engine: accumulation, clipping, the finite-loss check, epoch means and the meters,
against hand-computed references on a linear model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.engine import (AccuracyMeter, EpochContext, MeanMeter, NonFiniteLossError, batch_size_of, evaluate,
                           train_one_epoch)

CPU = torch.device("cpu")


def linear_model(w):
    model = nn.Linear(len(w), 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(np.asarray(w, dtype=np.float32)).reshape(1, -1))
    return model


def mse_step(model, batch):
    x, y = batch
    pred = model(x).squeeze(-1)
    return {"loss": ((pred - y) ** 2).mean(), "abs_err": (pred - y).abs().mean()}


def batches(n_batches, size, seed=0):
    rng = np.random.default_rng(seed)
    return [(torch.tensor(rng.normal(size=(size, 3)), dtype=torch.float32),
             torch.tensor(rng.normal(size=size), dtype=torch.float32)) for _ in range(n_batches)]


def mse_grad(w, x, y):
    """d/dw mean((x w - y)^2) = 2/n x^T (x w - y), in float64."""
    x, y = x.double().numpy(), y.double().numpy()
    return 2.0 / len(y) * x.T @ (x @ w - y)


def test_accumulation_equals_one_step_on_the_whole_batch():
    w0 = np.array([0.5, -1.0, 2.0])
    data = batches(4, 5)
    model = linear_model(w0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, data, mse_step, EpochContext(opt, CPU, 0, accum=2, progress=False))
    # two optimizer steps, each on the mean of two equal half-batch gradients
    w = w0.copy()
    for a, b in ((0, 1), (2, 3)):
        w = w - 0.1 * (mse_grad(w, *data[a]) + mse_grad(w, *data[b])) / 2
    np.testing.assert_allclose(model.weight.detach().double().numpy()[0], w, rtol=1e-5, atol=1e-6)


def test_last_partial_accumulation_still_steps():
    w0 = np.array([1.0, 0.0, -1.0])
    data = batches(3, 4, seed=1)
    model = linear_model(w0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_one_epoch(model, data, mse_step, EpochContext(opt, CPU, 0, accum=2, progress=False))
    w = w0 - 0.05 * (mse_grad(w0, *data[0]) + mse_grad(w0, *data[1])) / 2
    w = w - 0.05 * mse_grad(w, *data[2]) / 2  # the lone last batch, still divided by accum
    np.testing.assert_allclose(model.weight.detach().double().numpy()[0], w, rtol=1e-5, atol=1e-6)


def test_clipping_scales_the_step_to_the_clip_norm():
    w0 = np.array([10.0, 10.0, 10.0])
    data = batches(1, 8, seed=2)
    model = linear_model(w0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(model, data, mse_step, EpochContext(opt, CPU, 0, clip=0.5, progress=False))
    g = mse_grad(w0, *data[0])
    assert np.linalg.norm(g) > 0.5
    np.testing.assert_allclose(model.weight.detach().double().numpy()[0], w0 - 0.5 * g / np.linalg.norm(g), rtol=1e-5)


def test_epoch_means_are_means_of_the_steps():
    data = batches(5, 3, seed=3)
    model = linear_model([0.1, 0.2, 0.3])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(model, data, mse_step, EpochContext(opt, CPU, 0, log_interval=2, progress=False)).stats
    w = np.array([0.1, 0.2, 0.3])
    expected = [float(np.mean((x.double().numpy() @ w - y.double().numpy()) ** 2)) for x, y in data]
    assert stats["loss"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert set(stats) == {"loss", "abs_err", "samples_per_s"}


def test_non_finite_loss_stops_with_the_iteration():
    data = batches(4, 3, seed=4)
    x, y = data[2]
    data[2] = (x, y * float("nan"))
    model = linear_model([0.0, 0.0, 0.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 7 \\(iteration 2 "):
        train_one_epoch(model, data, mse_step, EpochContext(opt, CPU, 7, progress=False))


def test_batch_size_of_nested_batches():
    assert batch_size_of((["a", "b"], ["s", "s"], (torch.zeros(2, 5, 3), torch.zeros(2)))) == 2
    assert batch_size_of({"points": torch.zeros(4, 3)}) == 4
    assert batch_size_of(torch.zeros(7)) == 7


def test_meters_against_hand_computation():
    mean = MeanMeter(CPU)
    mean.update(2, loss=torch.tensor(1.0))
    mean.update(6, loss=torch.tensor(3.0))
    mean.sync()
    assert mean.compute() == {"loss": pytest.approx((2 * 1.0 + 6 * 3.0) / 8)}
    acc = AccuracyMeter(CPU)
    acc.update(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 0, 0]))
    acc.update(torch.tensor([[0.1, 0.9]]), torch.tensor([1]))
    acc.sync()
    assert acc.compute()["acc"] == pytest.approx(75.0)


def test_seeded_evaluate_repeats_and_leaves_the_rng_alone():
    def noisy_step(model, batch, meter):
        meter.update(1, draw=torch.rand(()))

    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = evaluate(nn.Identity(), noisy_step, [0, 1, 2], CPU, MeanMeter(CPU), seed=0).compute()
    second = evaluate(nn.Identity(), noisy_step, [0, 1, 2], CPU, MeanMeter(CPU), seed=0).compute()
    assert first == second and torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(0)
    assert first["draw"] == pytest.approx(torch.rand(3).mean().item())


def test_loss_scaling_leaves_the_update_unchanged():
    """fp16's GradScaler path (scale, unscale before clipping, step) gives the unscaled update."""
    w0 = np.array([3.0, -2.0, 1.0])
    data = batches(2, 6, seed=6)
    plain, scaled = linear_model(w0), linear_model(w0)
    for model, scaler in ((plain, None), (scaled, torch.amp.GradScaler("cpu", init_scale=1024.0))):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        train_one_epoch(model, data, mse_step, EpochContext(opt, CPU, 0, clip=0.5, scaler=scaler, progress=False))
    torch.testing.assert_close(scaled.weight, plain.weight, rtol=1e-6, atol=1e-7)


class _StopAfter:
    """A stop request that becomes true after ``n`` optimizer steps (as a signal would)."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def agreed(self, device):
        self.seen += 1
        return self.seen >= self.n


def test_a_stop_ends_the_epoch_after_the_current_step_and_skip_resumes_it():
    """Stopped after step 2 of 5 then continued with ``skip=2`` gives the weights of one
    uninterrupted epoch (the same SGD steps on the same batches), by hand."""
    data = batches(5, 4, seed=8)
    w0 = np.array([0.3, -0.2, 0.5])
    whole = linear_model(w0)
    train_one_epoch(whole, data, mse_step, EpochContext(torch.optim.SGD(whole.parameters(), lr=0.1), CPU, 0, progress=False))
    part = linear_model(w0)
    opt = torch.optim.SGD(part.parameters(), lr=0.1)
    result = train_one_epoch(part, data, mse_step, EpochContext(opt, CPU, 0, progress=False, stop=_StopAfter(2)))
    assert result.stopped_at == 2
    w = w0.copy()
    for x, y in data[:2]:
        w = w - 0.1 * mse_grad(w, x, y)
    np.testing.assert_allclose(part.weight.detach().numpy().reshape(-1), w, rtol=1e-5)
    skipped = []
    rest = train_one_epoch(part, data, mse_step, EpochContext(opt, CPU, 0, progress=False, skip=2,
                           on_skipped=lambda: skipped.append(True)))
    assert rest.stopped_at is None and skipped == [True]
    torch.testing.assert_close(part.weight, whole.weight)



def test_metrics_file_holds_one_line_per_epoch_in_order(tmp_path):
    """Appended epochs; an epoch written again (a run resumed from an earlier checkpoint) replaces
    that line and drops the later ones; a line a kill cut short is dropped; NaN becomes null."""
    import json

    from engine.engine import METRICS_FILE, append_metrics_line

    path = tmp_path / METRICS_FILE

    def epochs():
        return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]

    for epoch in range(3):
        append_metrics_line(str(tmp_path), {"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "lr": 1e-3})
    assert epochs() == [0, 1, 2]
    append_metrics_line(str(tmp_path), {"epoch": 1, "train_loss": 0.75, "acc": 50.0})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"epoch": 0, "train_loss": 1.0, "lr": 1e-3}, {"epoch": 1, "train_loss": 0.75, "acc": 50.0}]
    with open(path, "a") as f:
        f.write('{"epoch": 2, "train_lo')  # killed mid-write
    append_metrics_line(str(tmp_path), {"epoch": 2, "train_loss": float("nan")})
    assert epochs() == [0, 1, 2] and json.loads(path.read_text().splitlines()[-1]) == {"epoch": 2, "train_loss": None}
    assert not [p for p in tmp_path.iterdir() if p.name != METRICS_FILE]  # no temporary file left


def test_a_metrics_line_that_cannot_be_written_is_one_warning(tmp_path, capsys):
    from types import SimpleNamespace

    from engine.engine import write_epoch_metrics
    from utils.settings import RunSettings

    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")
    settings = RunSettings(job="pretrain", experiment_path=str(blocked), tfboard_path=None, log_name="t", config_path="")
    write_epoch_metrics(SimpleNamespace(epoch_log={"lr": 1e-3}), settings, 4, {"train_loss": 1.0})
    out = capsys.readouterr().out
    assert f"WARNING: epoch 4 not written to metrics.jsonl in {blocked}: " in out
