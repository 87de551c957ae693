"""Safe checkpoint loading (utils.checkpoint.load_checkpoint_file): a checkpoint whose unpickling
would run code is refused by every command that takes a checkpoint -- one line naming the file and
the refused global, exit status 2, and the code never runs -- while checkpoints holding NumPy RNG
states, scalars and arrays load without any flag; ``--trust_checkpoint`` loads anything after one
warning line. See docs/security.md."""
from __future__ import annotations

import argparse
import importlib
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.checkpoint import (NUMPY_SAFE_GLOBALS, CheckpointError, UntrustedCheckpointError, load_checkpoint_file,
                              refused_global)
from utils.cli import run_main
from writers import SYSTEM, TINY_FINETUNE, TINY_PRETRAIN, RunsCode, write_modelnet

REPO = Path(__file__).resolve().parent.parent


def write_evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"base_model": {"encoder.first_conv.0.bias": torch.zeros(2)}, "epoch": 3, "metrics": {},
                "hook": RunsCode(marker)}, path)
    return path


def numpy_checkpoint(path: Path, state=None) -> dict:
    """What checkpoints of earlier versions and other code bases hold: NumPy RNG states, NumPy
    scalars in the metrics, NumPy arrays."""
    np.random.seed(1)
    ckpt = {"base_model": state if state is not None else {"w": torch.ones(2)}, "epoch": np.int64(4),
            "metrics": {"acc": np.float64(91.5), "loss": np.float32(0.25), "best": np.bool_(True)},
            "rng_state": {"numpy": np.random.get_state(), "python": random.getstate(), "torch": torch.get_rng_state()},
            "confusion": np.arange(6, dtype=np.int32).reshape(2, 3), "weights": np.linspace(0, 1, 4),
            "counts": np.array([1, 2], dtype=np.uint8), "half": np.zeros(2, np.float16)}
    torch.save(ckpt, path)
    return ckpt


# ------------------------------------------------------------------------------ the loader itself
def test_numpy_states_scalars_and_arrays_load_without_the_flag(tmp_path, capsys):
    ckpt = numpy_checkpoint(tmp_path / "old.pth")
    before = set(map(repr, torch.serialization.get_safe_globals()))  # a set: torch lists them in no fixed order
    loaded = load_checkpoint_file(str(tmp_path / "old.pth"))
    assert "WARNING" not in capsys.readouterr().out
    assert loaded["epoch"] == 4 and type(loaded["metrics"]["acc"]) is np.float64 and loaded["metrics"]["best"]
    state = loaded["rng_state"]["numpy"]
    assert state[0] == "MT19937" and np.array_equal(state[1], ckpt["rng_state"]["numpy"][1])
    assert state[1].dtype == np.uint32 and loaded["confusion"].dtype == np.int32
    assert np.array_equal(loaded["weights"], ckpt["weights"]) and loaded["half"].dtype == np.float16
    assert set(map(repr, torch.serialization.get_safe_globals())) == before  # the allowlist does not leak ...
    with pytest.raises(Exception):
        torch.load(tmp_path / "old.pth")  # ... into other torch.load calls


def test_numpy_1_names_load_too(tmp_path):
    """Files written under NumPy 1 name ``numpy.core.multiarray`` (NumPy 2: ``numpy._core``)."""
    path = tmp_path / "np1.pth"
    torch.save({"numpy": np.random.get_state(), "acc": np.float64(1.5)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    old = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert old != data
    path.write_bytes(old)
    loaded = load_checkpoint_file(str(path))
    assert loaded["acc"] == 1.5 and loaded["numpy"][1].shape == (624,)
    assert {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar"} <= set(NUMPY_SAFE_GLOBALS)


@pytest.mark.parametrize("payload,refused", [
    (RunsCode, SYSTEM),                                       # a blocked module's function
    (lambda m: argparse.Namespace(lr=0.1), "argparse.Namespace"),  # a class not in the allowlist
    (lambda m: np.array(["text"]), "numpy.dtypes.StrDType"),  # a NumPy type outside the allowlist
])
def test_anything_else_is_refused_in_one_line_naming_the_file_and_the_global(tmp_path, payload, refused):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pth"
    torch.save({"base_model": {}, "x": payload(marker)}, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        load_checkpoint_file(str(path))
    message = str(err.value)
    assert isinstance(err.value, CheckpointError) and "\n" not in message
    assert str(path) in message and refused in message and "pass --trust_checkpoint if you trust this file" in message
    assert not marker.exists()


def test_trust_loads_with_one_warning_line(tmp_path, capsys):
    path = tmp_path / "args.pth"
    torch.save({"base_model": {}, "args": argparse.Namespace(lr=0.1)}, path)
    assert load_checkpoint_file(str(path), trust=True)["args"].lr == 0.1
    assert load_checkpoint_file(str(path), trust=True)["args"].lr == 0.1  # a second load: no second warning
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "WARNING" in lines[0] and str(path) in lines[0] and "--trust_checkpoint" in lines[0]
    assert "argparse.Namespace" in lines[0]  # what needed the trust
    with pytest.raises(UntrustedCheckpointError):  # without trust: refused again
        load_checkpoint_file(str(path))
    numpy_checkpoint(tmp_path / "safe.pth")
    assert load_checkpoint_file(str(tmp_path / "safe.pth"), trust=True)["epoch"] == 4
    assert capsys.readouterr().out == ""  # a file that loads safely: loaded safely, no warning


def test_refusal_messages_of_torch_are_parsed():
    wo = "Weights only load failed. In PyTorch 2.6, we changed the default.\n\n"
    assert refused_global(wo + "Unsupported global: GLOBAL a.B was not an allowed global by default.") == ("a.B", None)
    assert refused_global(wo + "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.") \
        == ("posix.system", None)
    assert refused_global(wo + "Can only build Tensor, ... via `add_safe_globals`, but got <class 'x.Y'>") == ("x.Y", None)
    assert refused_global(wo + "Trying to call reduce for unrecognized function <built-in function eval>")[0] \
        == "<built-in function eval>"
    njt = "``torch.nested`` and ``torch._dynamo`` must be imported to load nested jagged tensors (NJTs)"
    assert refused_global(wo + f"Please file an issue ... WeightsUnpickler error: {njt}\n\nCheck the documentation") \
        == (None, njt)  # no global named: torch's reason
    assert refused_global(wo + "Please file an issue ... WeightsUnpickler error: Unsupported operand 149\n\nCheck the "
                               "documentation") == (None, None)  # bytes that are no pickle: a damaged file
    assert refused_global("invalid load key, 'x'.") == (None, None)


def test_a_damaged_file_is_unreadable_not_untrusted(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read") as err:
        load_checkpoint_file(str(bad))
    assert not isinstance(err.value, UntrustedCheckpointError)


# ------------------------------------------------------------------------------ every command
@pytest.fixture(scope="module")
def setup(tmp_path_factory, shapenet55_root):
    tmp = tmp_path_factory.mktemp("security")
    marker = tmp / "code-ran"
    evil = write_evil_checkpoint(tmp / "downloaded.pth", marker)
    write_modelnet(tmp / "mn", n_rows=120, cache_points=96)
    pre = tmp / "tiny_pre.yaml"
    pre.write_text(TINY_PRETRAIN.format(root=shapenet55_root, epochs=1))
    ft = tmp / "tiny_ft.yaml"
    ft.write_text(TINY_FINETUNE.format(root=tmp / "mn", epochs=1))
    resume_dir = tmp / "exp" / "tiny_pre" / "resumed"
    resume_dir.mkdir(parents=True)
    shutil.copy(evil, resume_dir / "ckpt-last.pth")
    shutil.copy(pre, resume_dir / "config.yaml")  # the run's saved config
    cloud = tmp / "cloud.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(128, 3)).astype(np.float32))
    return dict(tmp=tmp, marker=marker, evil=str(evil), pre=str(pre), ft=str(ft), cloud=str(cloud))


MAIN = ["--num_workers", "0", "--device", "cpu", "--experiment_root", "{tmp}/exp"]
SEG = ["--log_root", "{tmp}/log", "--root", "{tmp}/no_shapenetpart", "--device", "cpu", "--num_workers", "0"]
COMMANDS = {  # script -> arguments; {evil}, {pre}, {ft}, {tmp}, {cloud} filled in from the fixture
    "main.py pre-training --start_ckpts": ("main.py", ["--config", "{pre}", "--start_ckpts", "{evil}", "--exp_name", "s", *MAIN]),
    "main.py pre-training --ckpts": ("main.py", ["--config", "{pre}", "--ckpts", "{evil}", "--exp_name", "w", *MAIN]),
    "main.py --resume": ("main.py", ["--config", "{pre}", "--resume", "--exp_name", "resumed", *MAIN]),
    "main.py --finetune_model": ("main.py", ["--config", "{ft}", "--finetune_model", "--ckpts", "{evil}",
                                             "--exp_name", "f", *MAIN]),
    "main.py --test": ("main.py", ["--config", "{ft}", "--test", "--ckpts", "{evil}", "--exp_name", "t", *MAIN]),
    "segmentation/main.py": ("segmentation/main.py", ["--ckpts", "{evil}", "--log_dir", "train", *SEG]),
    "segmentation/main.py --test": ("segmentation/main.py", ["--test", "--ckpts", "{evil}", "--log_dir", "test", *SEG]),
    "main_vis.py": ("main_vis.py", ["--config", "{pre}", "--ckpts", "{evil}", "--out_dir", "{tmp}/vis", "--device", "cpu",
                                    "--num_workers", "0"]),
    "tools/svm.py": ("tools/svm.py", ["--config", "{pre}", "--ckpts", "{evil}", "--device", "cpu", "--num_workers", "0"]),
    "tools/tsne.py": ("tools/tsne.py", ["--config", "{ft}", "--ckpts", "{evil}", "--out", "{tmp}/t.png", "--device", "cpu"]),
    "tools/extract_features.py": ("tools/extract_features.py", ["--ckpts", "{evil}", "--input", "{cloud}",
                                                                "--out", "{tmp}/f.npy", "--device", "cpu"]),
    "tools/cache_image_features.py": ("tools/cache_image_features.py", [
        "--config", "cfgs/demo/pretrain_demo.yaml", "--ckpts", "{evil}", "--out", "{tmp}/img.npy", "--device", "cpu"]),
    "tools/predict.py": ("tools/predict.py", ["--ckpts", "{evil}", "--input", "{cloud}", "--out", "{tmp}/p.csv",
                                              "--device", "cpu"]),
    "tools/export_onnx.py": ("tools/export_onnx.py", ["--ckpts", "{evil}", "--out", "{tmp}/m.onnx"]),
    "tools/export_weights.py --hf": ("tools/export_weights.py", ["--ckpts", "{evil}", "--hf", "{tmp}/shared"]),
}
SCRIPTS = ["main.py", "main_vis.py", "segmentation/main.py", *sorted(f"tools/{p.name}" for p in (REPO / "tools").glob("*.py"))]


def parser_of(script: str):
    if script == "main.py":
        from utils.parser import build_parser
        return build_parser()
    module = importlib.import_module(script[:-3].replace("/", "."))
    return getattr(module, "build_vis_parser", None) and module.build_vis_parser() or module.build_parser()


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_command_taking_a_checkpoint_has_the_trust_flag_and_is_tested(script):
    if script == "tools/make_demo_data.py":
        return  # the demo generator's own command: no checkpoint
    flags = {f for action in parser_of(script)._actions for f in action.option_strings}
    if flags & {"--ckpts", "--start_ckpts"}:
        assert "--trust_checkpoint" in flags, script
        tested = {s for s, _ in COMMANDS.values()} | {"tools/export_weights.py"}  # (the subprocess test below)
        assert script in tested, f"{script}: add it to COMMANDS"


def fill(args, setup) -> list:
    return [a.format(**{k: v for k, v in setup.items() if isinstance(v, str)}, tmp=setup["tmp"]) for a in args]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_refuses_a_checkpoint_that_would_run_code(setup, name, capsys):
    """Run as the command line does (``run_main(main)``): one line naming the file and the global,
    exit status 2, and the pickled code never ran."""
    script, args = COMMANDS[name]
    module = importlib.import_module(script[:-3].replace("/", "."))
    argv = fill(args, setup)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: module.main(argv), prog=script)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2, err[-20:]
    expected = "ckpt-last.pth" if "--resume" in name else setup["evil"]
    assert err[-1].startswith(f"{script}: error: checkpoint file '") and expected in err[-1], err[-1]
    assert SYSTEM in err[-1] and "pass --trust_checkpoint if you trust this file" in err[-1]
    assert err[-1].endswith("[UntrustedCheckpointError]")  # (the subprocess test below also checks: no traceback)
    assert not setup["marker"].exists()


def test_export_weights_refuses_then_trusts_through_the_command_line(setup, tmp_path):
    """A subprocess: the real exit status; a third-party checkpoint (an argparse.Namespace beside
    the weights) is refused, and exported with --trust_checkpoint after one warning line."""
    cmd = [sys.executable, str(REPO / "tools" / "export_weights.py"), "--no_config"]
    evil = subprocess.run(cmd + ["--ckpts", setup["evil"], "--out", str(tmp_path / "e.safetensors")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert evil.returncode == 2 and not setup["marker"].exists(), evil.stderr[-2000:]
    last = evil.stderr.strip().splitlines()[-1]
    assert setup["evil"] in last and SYSTEM in last and "--trust_checkpoint" in last and "Traceback" not in evil.stderr

    other = tmp_path / "third_party.pth"
    torch.save({"model": {"encoder.first_conv.0.bias": torch.ones(3)}, "args": argparse.Namespace(lr=0.1)}, other)
    from tools import export_weights

    with pytest.raises(UntrustedCheckpointError, match="argparse.Namespace"):
        export_weights.main(["--ckpts", str(other), "--no_config"])
    trusted = subprocess.run(cmd + ["--ckpts", str(other), "--trust_checkpoint"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    warnings = [ln for ln in (trusted.stdout + trusted.stderr).splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and str(other) in warnings[0] and "full unpickling" in warnings[0]
    assert (tmp_path / "third_party.safetensors").is_file()


@pytest.mark.parametrize("flag", [[], ["--trust_checkpoint"]])
def test_fewshot_all_passes_the_flag_on_to_main(setup, monkeypatch, flag):
    """tools/fewshot_all.py loads no downloaded checkpoint itself: main.py does, per fold, with
    the --trust_checkpoint given to fewshot_all (and refuses without it, as tested above)."""
    import main as main_module
    from tools import fewshot_all

    seen = []
    monkeypatch.setattr(main_module, "main", lambda argv: seen.append(argv))
    with pytest.raises(SystemExit):  # the fold wrote no ckpt-last.pth: reported as failed
        fewshot_all.main(["--config", setup["ft"], "--way", "5", "--shot", "10", "--folds", "0", "--exp_name", "fs",
                          "--experiment_root", f"{setup['tmp']}/exp", *flag, "--finetune_model", "--ckpts", setup["evil"]])
    assert len(seen) == 1 and ("--trust_checkpoint" in seen[0]) == bool(flag)
    assert seen[0][-3:] == ["--finetune_model", "--ckpts", setup["evil"]]


def test_numpy_checkpoint_loads_through_a_command_without_the_flag(setup, tmp_path, capsys):
    """An older checkpoint (NumPy RNG states and scalars) needs no --trust_checkpoint."""
    from tools import export_weights

    path = tmp_path / "older.pth"
    numpy_checkpoint(path, state={"encoder.first_conv.0.bias": torch.ones(3)})
    written = export_weights.main(["--ckpts", str(path), "--no_config"])
    assert written == [str(tmp_path / "older.safetensors")] and "WARNING" not in capsys.readouterr().out
