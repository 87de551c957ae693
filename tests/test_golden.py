"""The first five training losses of pre-training, fine-tuning and part segmentation, with seed 0
on tiny data, equal the figures recorded with the code before the single-engine refactor (the
three separate training loops of tools/runner_pretrain.py, tools/runner_finetune.py and
segmentation/main.py, commit d4dbecd), to 1e-6.

The losses are read where every job hands them to autograd (``Tensor.backward``), so the test
does not depend on how the engine is organised.

Changed on purpose since, each time with the earlier figures reproduced by the earlier code:
- the fifth fine-tuning loss, when farthest point sampling started to skip points within 1e-3
  (squared norm) of the origin as the released pointnet2_ops kernel does (3.857391357421875 ->
  3.828697919845581; ``skip_origin=False`` reproduces the former);
- all figures at the 1e-6 level, when the patch embeddings' 1x1 convolutions became matmuls
  (fp32 rounding; the layers equal the convolutions to 1e-5, tests/test_models.py): the first
  losses moved by <= 1.2e-6 and, through five Adam steps, the fifth segmentation loss by 3.5e-4
  (pre-refactor figures: fine-tuning 3.7413992881774902, 3.4829866886138916, 3.7497947216033936,
  3.986008644104004; segmentation 3.8652002811431885, 3.7842984199523926, 3.7216711044311523,
  3.616826057434082, 3.4918432235717773);
- all figures, when the initialisation started to follow the released code (``model.init:
  released``): the pre-training decoder's Linears became xavier-uniform (the released
  ``TransformerDecoder._init_weights``) and the classifier and segmenter keep PyTorch's default
  initialisation (their released ``_init_weights`` is never applied). ``PREVIOUS`` holds the
  figures recorded before (trunc-normal 0.02 everywhere); ``model.init: trunc_normal``
  (segmentation: ``init = 'trunc_normal'`` on the namespace) reproduces them
  (``test_trunc_normal_init_reproduces_the_previous_losses``).

The figures are of the ``exact`` patch-embedding arithmetic (``INTERMAE_EMBED_COMPUTE=exact``, the
earlier default, set here for every test); ``FAST`` holds those of the default ``fast`` arithmetic
(equal to ``exact`` to fp32 rounding: the first losses agree to ~1e-7, the fifth, after four Adam
steps, to a few 1e-4), recorded when it became the default.

The tiny configs set ``epoch_count: exact``; the released count (one epoch more) does not change the
first five losses.
"""
from __future__ import annotations

import pytest
import torch
from easydict import EasyDict

import main as main_module
from models.Inter_MAE import Inter_MAE, MaskTransformer
from models.layers import EMBED_COMPUTE_ENV
from engine.partseg import run as seg_run
from segmentation.main import get_args as seg_args
from writers import (TINY_FINETUNE, TINY_TC, write_modelnet, write_shapenet55, write_shapenetpart,
                     write_tiny_pretrain_config)

RECORDED = {
    "pretrain": [0.48888635635375977, 0.4994148313999176, 0.4871201813220978, 0.4916398525238037, 0.3726295232772827],
    "finetune": [4.249800682067871, 3.4816765785217285, 3.638477325439453, 4.049989223480225, 4.131480693817139],
    "segmentation": [4.089558124542236, 3.9929168224334717, 3.8416433334350586, 3.780813217163086, 3.516123056411743],
}
# Recorded before the released initialisation became the default; model.init: trunc_normal reproduces them.
PREVIOUS = {
    "pretrain": [0.660708487033844, 0.6516212224960327, 0.6540736556053162, 0.6421808004379272, 0.5644617080688477],
    "finetune": [3.7414004802703857, 3.4829957485198975, 3.749791383743286, 3.986018180847168, 3.8286495208740234],
    "segmentation": [3.8652000427246094, 3.784299373626709, 3.721658706665039, 3.6168856620788574, 3.4914963245391846],
}


# The default (fast) patch-embedding arithmetic, recorded when it became the default.
FAST = {
    "pretrain": [0.48888635635375977, 0.4994148313999176, 0.4871201813220978, 0.4916398823261261, 0.3726294934749603],
    "finetune": [4.249800205230713, 3.4816765785217285, 3.6384758949279785, 4.049989700317383, 4.131478309631348],
    "segmentation": [4.089558124542236, 3.9929168224334717, 3.84163236618042, 3.780526638031006, 3.5152428150177],
}


# The same three tables computed on a CPU whose ATen kernels run AVX2 (no AVX-512), by the code of
# commit 60d096e (before the settings refactor of issue 21) and again after it. The tables above were
# recorded on an AVX-512 machine: vector width changes the order of the sums in the reductions, so
# the first losses agree to ~1e-7 and the fourth and fifth (after Adam steps) drift by up to 1e-3.
# The code computes the same thing on both; each machine is held to its own figures to 1e-6.
RECORDED_ON = {
    "AVX2": {
        "RECORDED": {"pretrain": [0.48888638615608215, 0.49941474199295044, 0.4871201813220978, 0.4916398823261261, 0.3726295232772827], "finetune": [4.249800682067871, 3.4816768169403076, 3.6384763717651367, 4.049989223480225, 4.1314849853515625], "segmentation": [4.089558124542236, 3.9929165840148926, 3.841632127761841, 3.780526876449585, 3.5152428150177]},
        "PREVIOUS": {"pretrain": [0.660708487033844, 0.6516212224960327, 0.6540737152099609, 0.6421807408332825, 0.5644617080688477], "finetune": [3.7414000034332275, 3.4829962253570557, 3.7497918605804443, 3.986017942428589, 3.8286495208740234], "segmentation": [3.8652002811431885, 3.784301519393921, 3.7216811180114746, 3.617340087890625, 3.4911439418792725]},
        "FAST": {"pretrain": [0.488886296749115, 0.4994148015975952, 0.4871201515197754, 0.4916399121284485, 0.3726295232772827], "finetune": [4.249799728393555, 3.4816761016845703, 3.638476848602295, 4.049990177154541, 4.13148307800293], "segmentation": [4.089558124542236, 3.9929168224334717, 3.841632127761841, 3.7805263996124268, 3.5152430534362793]},
    },
}
_CAPABILITY = torch.backends.cpu.get_cpu_capability()
if _CAPABILITY in RECORDED_ON:
    RECORDED, PREVIOUS, FAST = (RECORDED_ON[_CAPABILITY][name] for name in ("RECORDED", "PREVIOUS", "FAST"))


@pytest.fixture(autouse=True)
def exact_embedding(monkeypatch):
    monkeypatch.setenv(EMBED_COMPUTE_ENV, "exact")


@pytest.fixture
def losses(monkeypatch):
    """The values of the tensors ``.backward()`` is called on, in order."""
    seen = []
    backward = torch.Tensor.backward

    def recording_backward(self, *args, **kwargs):
        seen.append(float(self.detach()))
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", recording_backward)
    return seen


def cpu_args(exp_root, *argv):
    return [*argv, "--num_workers", "0", "--device", "cpu", "--experiment_root", str(exp_root)]


def pretraining_losses(tmp_path, init=None):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", write_shapenet55(tmp_path / "sn55"), epochs=2)
    if init is not None:
        cfg.write_text(cfg.read_text().replace("loss: cdl2,", f"loss: cdl2, init: {init},"))
    main_module.main(cpu_args(tmp_path / "exp", "--config", str(cfg), "--exp_name", "golden"))


def finetuning_losses(tmp_path, init=None):
    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 12), ("test", 6)), n_rows=130, cache_points=96)
    cfg = tmp_path / "tiny_ft.yaml"
    text = TINY_FINETUNE.format(root=tmp_path / "mn", epochs=2)
    if init is not None:
        text = text.replace("patch_embed: inter_mae}", f"patch_embed: inter_mae, init: {init}}}")
    cfg.write_text(text)
    torch.manual_seed(0)
    pre = Inter_MAE(EasyDict(NAME="Inter_MAE", group_size=8, num_group=8, loss="cdl2",
                             transformer_config=EasyDict(TINY_TC, decoder_embed_dim=16)))
    torch.save({"base_model": pre.state_dict()}, tmp_path / "pre.pth")
    main_module.main(cpu_args(tmp_path / "exp", "--config", str(cfg), "--finetune_model", "--ckpts",
                              str(tmp_path / "pre.pth"), "--exp_name", "golden"))


def segmentation_losses(tmp_path, init=None):
    root = write_shapenetpart(tmp_path / "part", {"Bag": (6, 2, 2), "Table": (6, 2, 2)})
    torch.manual_seed(0)
    encoder = MaskTransformer(trans_dim=32, depth=3, num_heads=2, encoder_dims=32, patch_embed="inter_mae")
    state = {f"MAE_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 1, 32)
    torch.save({"base_model": state, "epoch": 0}, tmp_path / "pre.pth")
    args = seg_args(["--root", str(root), "--log_root", str(tmp_path / "log"), "--log_dir", "golden", "--npoint", "128",
                     "--device", "cpu", "--num_workers", "0", "--ckpts", str(tmp_path / "pre.pth"), "--batch_size", "4",
                     "--epoch", "2", "--warmup_epoch", "0", "--trans_dim", "32", "--depth", "3", "--num_heads", "2",
                     "--num_group", "16", "--group_size", "8"])
    if init is not None:  # segmentation/main.py has no --init flag (yet): set it on the namespace
        args.init = init
    seg_run(args)


JOBS = {"pretrain": pretraining_losses, "finetune": finetuning_losses, "segmentation": segmentation_losses}


@pytest.mark.parametrize("job", list(JOBS))
def test_first_five_losses(job, tmp_path, losses):
    JOBS[job](tmp_path)
    assert losses[:5] == pytest.approx(RECORDED[job], abs=1e-6)


@pytest.mark.parametrize("job", list(JOBS))
def test_trunc_normal_init_reproduces_the_previous_losses(job, tmp_path, losses):
    JOBS[job](tmp_path, init="trunc_normal")
    assert losses[:5] == pytest.approx(PREVIOUS[job], abs=1e-6)


@pytest.mark.parametrize("job", list(JOBS))
def test_fast_embedding_first_five_losses(job, tmp_path, losses, monkeypatch):
    monkeypatch.setenv(EMBED_COMPUTE_ENV, "fast")
    JOBS[job](tmp_path)
    assert losses[:5] == pytest.approx(FAST[job], abs=1e-6)
    assert losses[:5] == pytest.approx(RECORDED[job], abs=1e-3)  # the same function as exact, up to rounding
