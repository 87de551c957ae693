"""Sharing a trained model: the Hugging Face-style model folder, its model card, the Hub upload,
and the ONNX graph.

    from engine.export import export_model_folder, export_onnx_file
    export_model_folder("experiments/finetune_folder/mine/ckpt-best.pth", "shared/mine")  # config.json, model.safetensors, README.md
    export_onnx_file("shared/mine", "mine.onnx")                                          # logits graph (B, N, 3) -> (B, classes)

The folder is read back by every loader (``utils.checkpoint.load_checkpoint_file`` reads a folder
as a checkpoint; :mod:`utils.model_folder` has the format). ``tools/export_weights.py --hf DIR`` and
``tools/export_onnx.py`` are the commands.
"""
from __future__ import annotations

import os
import shlex
import sys
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from datasets.io import AUTO_MAX_POINTS, BadFileError
from models.backbone import PointEncoder, checkpoint_kind, encoder_state_dict, max_mean_pool
from utils.checkpoint import (CheckpointError, atomic_write, checkpoint_class_names, load_checkpoint_file,
                              save_safetensors, state_dict_of)
from utils.schema import to_plain
from utils.logger import print_log
from utils.text import printable
from utils.model_folder import (CARD_NAME, CONFIG_NAME, FORMAT_VERSION, MODEL_TYPE, WEIGHTS_NAME, ModelFolderError,
                                check_folder_config, is_model_folder, plain_json, preprocessing_of)

PROJECT = "inter-mae"
PROJECT_URL = "https://github.com/ywu0912/TeamCode/tree/liujia99/Inter-MAE"  # the released code this re-implements
TASK_OF_KIND = {"classifier": "classification", "pretrain": "pretraining", "encoder": "encoder",
                "segmentation": "segmentation"}


def project_version() -> str:
    """The project's version: the installed metadata, else the checkout's ``pyproject.toml``
    (the commands run from a checkout), else ``unknown``."""
    from importlib import metadata

    try:
        return metadata.version(PROJECT)
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml"),
                  "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, ValueError, ImportError):
        return "unknown"


def project_license() -> Optional[str]:
    """The licence the installed project declares (its metadata), else None."""
    from importlib import metadata

    try:
        meta = metadata.metadata(PROJECT)
    except metadata.PackageNotFoundError:
        return None
    return meta.get("License-Expression") or meta.get("License") or None


# ------------------------------------------------------------------------- command lines
COMMAND_MARK = " - Command: "  # the line every run logs at its start (main.py, segmentation/main.py)
MAX_LOG_BYTES = 64 << 20       # larger log files are not searched


def run_commands(ckpt_path: str, follow: bool = True) -> List[str]:
    """The command lines that made a checkpoint, oldest first: the ``Command:`` lines of the run's
    log files beside it (a resumed run has one per start), and, with ``follow``, before them those
    of the run its ``--ckpts`` / ``--start_ckpts`` names (the pre-training a fine-tuning started
    from), when that run folder is at hand. Empty when no log is found."""
    folder = os.path.dirname(os.path.abspath(str(ckpt_path)))
    if not os.path.isdir(folder):
        return []
    commands: List[str] = []
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".log")):
        path = os.path.join(folder, name)
        try:
            if not os.path.isfile(path) or os.path.getsize(path) > MAX_LOG_BYTES:
                continue
            with open(path, "r", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if COMMAND_MARK in line:
                        commands.append(_as_python(line.split(COMMAND_MARK, 1)[1].strip()))
                        break  # one start per log file
        except OSError:
            continue
    if follow and commands:
        words = shlex.split(commands[0]) if commands[0].count('"') % 2 == 0 else commands[0].split()
        for flag in ("--ckpts", "--start_ckpts"):
            if flag in words[:-1]:
                source = words[words.index(flag) + 1]
                if os.path.isfile(source) and os.path.abspath(source) != os.path.abspath(str(ckpt_path)):
                    commands = run_commands(source, follow=False) + commands
                break
    return commands


def _as_python(command: str) -> str:
    """A run's recorded command (``sys.argv`` joined: ``main.py --config ...``) as a command line."""
    return command if command.startswith("python") else "python " + command


# ----------------------------------------------------------------------------- config.json
def folder_config(ckpt: Mapping[str, Any], ckpt_path: str, run_cfg: Mapping, encoder_only: bool = False
                  ) -> Dict[str, Any]:
    """The ``config.json`` of a checkpoint (see :mod:`utils.model_folder`), checked."""
    state = state_dict_of(ckpt, ckpt_path)
    kind = "encoder" if encoder_only else checkpoint_kind(state)
    if kind not in TASK_OF_KIND:
        raise CheckpointError(f"checkpoint '{ckpt_path}' holds no Inter-MAE model this code knows "
                              f"(no 'MAE_encoder.*', 'cls_head_finetune.*', 'label_conv.*' or 'encoder.*' weights)")
    config = plain_json(to_plain(run_cfg))
    model = config.get("model") or {}
    names = checkpoint_class_names(ckpt, ckpt_path, model.get("cls_dim")) if kind == "classifier" else None
    if kind == "classifier" and not names:
        if model.get("cls_dim") is None:
            raise CheckpointError(f"checkpoint '{ckpt_path}' names no classes and its config sets no model.cls_dim")
        names = [str(i) for i in range(int(model["cls_dim"]))]
    if kind == "classifier" and model.get("cls_dim") is None:
        model["cls_dim"] = len(names)
    data = {
        "model_type": MODEL_TYPE,
        "format_version": FORMAT_VERSION,
        "architectures": [str(model.get("NAME", "PointEncoder")) if not encoder_only else "PointEncoder"],
        "task": TASK_OF_KIND[kind],
        "class_names": names,
        "preprocessing": preprocessing_of(config, auto_points=AUTO_MAX_POINTS),  # as Predictor reads files
        "config": config,
        "metrics": plain_json(dict(ckpt.get("metrics") or {})),
        "best_metrics": plain_json(dict(ckpt.get("best_metrics") or {})),
        "epoch": int(ckpt.get("epoch", -1)) if isinstance(ckpt.get("epoch", -1), int) else -1,
        "source": os.path.basename(str(ckpt_path)),
        "version": project_version(),
    }
    if isinstance(ckpt.get("command"), list):  # a model folder's, exported again
        data["command"] = [str(c) for c in ckpt["command"]]
    else:  # the run's logs (every start, and the run it started from), else the checkpoint's own record
        recorded = ckpt.get("command")
        data["command"] = run_commands(ckpt_path) or ([_as_python(recorded)] if isinstance(recorded, str) else [])
    if isinstance(ckpt.get("data"), dict):  # what the training run recorded of its data
        data["data"] = plain_json(ckpt["data"])
    return check_folder_config(data, f"the config of {ckpt_path}")


# ------------------------------------------------------------------------------ model card
def _table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> List[str]:
    def cell(v: Any) -> str:  # class names and paths come from the user's files: escaped, one line
        return printable(v).replace("|", "\\|").replace("`", "'")

    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _count_of(recorded: Any, split: str, where: Sequence[str]) -> Any:
    """The number of items the run recorded for ``split`` (or for another split of the same dataset,
    folder and subset: a folder run's val and test entries are one subset), else 'not recorded'."""
    recorded = recorded if isinstance(recorded, Mapping) else {}
    for name in [split, *recorded]:
        entry = recorded.get(name)
        if isinstance(entry, Mapping) and (name == split or (entry.get("dataset"), entry.get("path"),
                                                             entry.get("subset")) == tuple(where)):
            return entry.get("count", "not recorded")
    return "not recorded"


def _figure(value: Any, key: str = "acc") -> str:
    """Accuracies (``acc*``, per class) with 2 decimals, other figures (losses, ranks) with 4 digits."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.2f}" if key.startswith("acc") else f"{value:.4g}"


def _code_line(text: Any) -> str:
    """One line of a fenced block: escaped (:func:`utils.text.printable`), never a closing fence."""
    return printable(text).replace("`", "'")


def model_card(data: Mapping[str, Any], export_command: str, name: str = "") -> str:
    """The ``README.md`` of a model folder: Hub metadata (YAML), task, classes, data, commands,
    metrics (accuracy, per-class accuracy when the run recorded them), preprocessing, how to load
    it, version and licence."""
    from huggingface_hub import ModelCardData

    config = data["config"]
    model = config.get("model") or {}
    task = data["task"]
    names = data.get("class_names") or []
    best = data.get("best_metrics") or {}
    licence = project_license()
    card = ModelCardData(license=(licence or "other").lower() if licence and " " not in licence else "other",
                         library_name=PROJECT, tags=["point-cloud", "3d", "self-supervised", "inter-mae", "point-mae",
                                                     task])
    title = name or data.get("source") or "model"
    lines = ["---", card.to_yaml(), "---", "", f"# {title}", "",
             f"An Inter-MAE {task} model ({data['architectures'][0]}) exported from `{data.get('source')}` "
             f"(epoch {data.get('epoch')}) with project version {data.get('version')}.", "", "## Task", ""]
    if task == "classification":
        lines += [f"Classifies a point cloud or mesh into one of {len(names)} classes.", ""]
        lines += _table([(i, n) for i, n in enumerate(names)], ["index", "class"]) + [""]
    elif task == "pretraining":
        lines += ["The pre-trained model (point encoder, decoder and image branch): fine-tune it "
                  "(`--finetune_model --ckpts` this folder) or take its encoder's features.", ""]
    elif task == "encoder":
        lines += ["The point encoder alone: fine-tune it (`--finetune_model --ckpts` this folder) or take its "
                  "features (`tools/extract_features.py`).", ""]
    else:
        lines += _segmentation_task(config.get("parts"))
    lines += ["## Data", ""]
    rows = []
    for split, entry in (config.get("dataset") or {}).items():
        if isinstance(entry, Mapping):
            base = entry.get("_base_") if isinstance(entry.get("_base_"), Mapping) else {}
            others = entry.get("others") if isinstance(entry.get("others"), Mapping) else {}
            where = (str(base.get("NAME", "?")), str(base.get("DATA_PATH", "?")), str(others.get("subset", split)))
            rows.append((split, *where, _count_of(data.get("data"), split, where)))
    lines += (_table(rows, ["split", "dataset", "folder", "subset", "files"]) if rows
              else ["The run config names no dataset."]) + [""]
    lines += ["## How it was made", "", "```"]
    commands = data.get("command")
    for command in ([commands] if isinstance(commands, str) else list(commands or [])):
        lines.append(_code_line(command))
    if not commands:
        lines.append(f"# training command not recorded in {data.get('source')}")
    lines += [_code_line(export_command), "```", "", "## Metrics", ""]
    figures = [(k, _figure(v, k)) for k, v in best.items() if not isinstance(v, (dict, list))]
    part_iou = best.get("part_iou")
    if figures:
        lines += ["Best validation figures of the run (the checkpoint's `best_metrics`"
                  + ("; accuracy in %):" if task == "classification" else "):"), ""]
        lines += _table(figures, ["metric", "value"]) + [""]
    else:
        lines += ["The checkpoint records no validation figures.", ""]
    if isinstance(part_iou, Mapping) and part_iou:
        lines += ["Per-part IoU of that validation:", ""]
        lines += _table([(k, _figure(v, k)) for k, v in part_iou.items()], ["part", "IoU"]) + [""]
    per_class = best.get("per_class_acc") or (data.get("metrics") or {}).get("per_class_acc")
    if isinstance(per_class, Mapping) and per_class:
        rows = [(k, "no samples" if v is None else _figure(v)) for k, v in per_class.items()]
        lines += ["Per-class accuracy of that validation (%):", ""] + _table(rows, ["class", "accuracy"]) + [""]
    elif task == "classification":
        lines += ["Per-class accuracy: not recorded in the checkpoint; `tools/predict.py --input TEST_FOLDER` "
                  "prints it for files in class folders.", ""]
    prep = data["preprocessing"]
    own_parts = task == "segmentation" and isinstance(config.get("parts"), Mapping)
    lines += ["## Preprocessing", "",
              f"Each file: {prep['N_POINTS']} points read (meshes: seeded samples on the surface, larger clouds a "
              f"seeded subset, `sample_seed` {prep['sample_seed']}), centred and scaled into the unit sphere, then "
              f"farthest point sampling to {prep['npoints']} points. The model groups them into "
              f"{model.get('num_group', '?')} patches of {model.get('group_size', '?')} points.", "",
              "## Use", "", "```python", "from engine.predict import Predictor" if task == "classification"
              or own_parts else "from engine.features import load_point_encoder", ]
    if task == "classification":
        lines += [f"predictor = Predictor.from_pretrained(\"{title}\")   # this folder, or its Hub id",
                  "results = predictor.predict(\"new_files/\")"]
    elif own_parts:
        lines += [f"predictor = Predictor.from_pretrained(\"{title}\")   # this folder, or its Hub id",
                  "labels = predictor.predict_points(points, category)   # (N, 3) -> (N,) part ids"]
    else:
        lines += [f"encoder = load_point_encoder(\"{title}\")   # this folder, or its Hub id",
                  "features = encoder.extract(points)   # (B, N, 3) -> (B, 2C)"]
    lines += ["```", "", "Command line (from a checkout of the project):", "", "```"]
    if task == "classification":
        lines += [f"python tools/predict.py --ckpts {title} --input NEW_FILES_OR_DIR --out predictions.csv",
                  f"python tools/export_onnx.py --ckpts {title} --out model.onnx"]
    elif own_parts:
        lines += [f"python tools/predict.py --ckpts {title} --input NEW_FILES_OR_DIR --out predictions/",
                  f"python tools/extract_features.py --ckpts {title} --input my_clouds/ --out features.npy"]
    else:
        lines += [f"python main.py --config cfgs/finetune_folder.yaml --finetune_model --ckpts {title} "
                  f"--exp_name mine --data_root DIR_WITH_CLASS_SUBFOLDERS",
                  f"python tools/extract_features.py --ckpts {title} --input my_clouds/ --out features.npy"]
    lines += ["```", "", "The weights load without unpickling (`model.safetensors`); `config.json` holds the run's "
              "config, the class names and the preprocessing, and is checked like any config before a model is built.",
              "", "## Version and licence", "",
              f"Made with the Inter-MAE re-implementation, version {data.get('version')} (re-implementing "
              f"[Inter-MAE]({PROJECT_URL}), IEEE TMM 2023). Licence: "
              f"{licence or 'the licence of the code and of the training data apply; none is declared in the project metadata'}.",
              ""]
    return "\n".join(lines)


def _segmentation_task(parts: Any) -> List[str]:
    """The task section of a part segmenter: the parts of each category of a folder run (its
    config's ``parts`` section), else ShapeNetPart's head."""
    if not isinstance(parts, Mapping) or not isinstance(parts.get("names"), list):
        return ["A part segmenter (ShapeNetPart's head); its encoder fine-tunes other tasks (`--ckpts` this folder).", ""]
    names = [str(n) for n in parts["names"]]
    table = parts.get("category_parts") if isinstance(parts.get("category_parts"), Mapping) else {}
    rows = []
    for category in parts.get("categories") or []:
        ids = [int(i) for i in table.get(category, []) if isinstance(i, int) and 0 <= i < len(names)]
        rows.append((category, ", ".join(f"{i} {names[i]}" for i in ids)))
    lines = [f"Labels every point of a cloud or mesh with one of {len(names)} parts; its encoder fine-tunes "
             "other tasks (`--ckpts` this folder).", ""]
    return lines + _table(rows, ["category", "parts"]) + [""]


# ---------------------------------------------------------------------------- model folder
def _refuse_other_model(folder: str, overwrite: bool) -> None:
    if os.path.isfile(folder):
        raise ModelFolderError(f"--hf '{folder}' is a file; expected a folder (new or a model folder)")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise ModelFolderError(f"--hf '{folder}' exists and is not empty; give a new folder or --overwrite "
                               f"(an export never replaces another model's files unasked)")


def export_model_folder(ckpt_path: str, folder: str, config: Any = None, encoder_only: bool = False,
                        overwrite: bool = False, trust: bool = False, export_command: Optional[str] = None,
                        name: Optional[str] = None, logger=None) -> List[str]:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` of the checkpoint ``ckpt_path``
    (a ``.pth``, a ``.safetensors`` export or a model folder) into ``folder``. ``encoder_only``:
    the point encoder alone (named as in a classifier). ``name``: how the card names the model
    (its Hub id when it will be pushed; default the folder's name). Returns the paths written."""
    from engine.features import find_config

    _refuse_other_model(folder, overwrite)
    ckpt = load_checkpoint_file(ckpt_path, trust=trust)
    state = state_dict_of(ckpt, ckpt_path)
    run_cfg, source = find_config(ckpt_path, ckpt, config)
    data = folder_config(ckpt, ckpt_path, run_cfg, encoder_only)
    weights = encoder_state_dict(state, ckpt_path) if encoder_only else state
    os.makedirs(folder, exist_ok=True)
    command = export_command or " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    written = save_safetensors(weights, os.path.join(folder, WEIGHTS_NAME),
                               metadata={"format": "pt", "model_type": MODEL_TYPE, "task": data["task"]})
    card = model_card(data, command, name or os.path.basename(os.path.abspath(folder)))
    for file_name, text in ((CONFIG_NAME, _json_text(data)), (CARD_NAME, card)):
        atomic_write(os.path.join(folder, file_name), lambda f, t=text: f.write(t.encode("utf-8")))
        written.append(os.path.join(folder, file_name))
    n = sum(v.numel() for v in weights.values())
    print_log(f"[export] {data['task']} model of {ckpt_path} (config {source}): {len(weights)} tensors "
              f"({n:,} numbers) -> {folder}/ ({', '.join(os.path.basename(p) for p in written)})", logger=logger)
    return written


def _json_text(data: Mapping[str, Any]) -> str:
    import json

    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def push_to_hub(folder: str, repo_id: str, private: bool = True, revision: Optional[str] = None,
                commit_message: Optional[str] = None, logger=None) -> str:
    """Upload a model folder to the Hub (``huggingface_hub``: the token of ``hf auth login`` or
    ``HF_TOKEN``); creates the repository (private by default) when missing. Returns the commit URL."""
    from huggingface_hub import HfApi

    if not is_model_folder(folder):
        raise ModelFolderError(f"'{folder}' is not a model folder (no {CONFIG_NAME}); export one with --hf first")
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, repo_type="model",
                             allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
                             commit_message=commit_message or f"Upload {os.path.basename(os.path.abspath(folder))}")
    url = str(getattr(info, "commit_url", info))
    print_log(f"[export] {folder}/ pushed to the Hub: {repo_id} ({url})", logger=logger)
    return url


# ------------------------------------------------------------------------------------ ONNX
class FeatureGraph(nn.Module):
    """A point encoder as the features graph: (B, N, 3) -> ``max_mean_pool(patch_tokens)`` (B, 2C)."""

    def __init__(self, encoder: PointEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, points: Tensor) -> Tensor:
        return max_mean_pool(self.encoder.patch_tokens(points))


def _onnx_program(module: nn.Module, example: Tensor, output: str, min_points: int):
    """``torch.onnx.export`` (the torch.export-based exporter; needs onnxscript) with a dynamic
    batch and point count."""
    from engine.onnx_runtime import INPUT_NAME, require

    require("onnx", "exporting to ONNX")
    require("onnxscript", "exporting to ONNX (torch.onnx's exporter)")
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("points", min=min_points)}
    with torch.no_grad():
        return torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=[INPUT_NAME],
                                 output_names=[output], dynamic_shapes=({k: v for k, v in dims.items()},),
                                 external_data=False, verbose=False, optimize=True)


def export_onnx_file(ckpt_path: str, out: str, features: bool = False, config: Any = None, npoints: Optional[int] = None,
                     trust: bool = False, verify: Sequence[str] = (), logger=None) -> Dict[str, Any]:
    """Export the classifier of ``ckpt_path`` (a ``.pth``, ``.safetensors`` export, model folder or
    Hub id) as an ONNX graph ``points (B, N, 3) -> logits (B, classes)``; with ``features`` its
    point encoder as ``points -> features (B, 2C)`` (what ``tools/extract_features.py`` writes).
    The metadata ``inter_mae`` holds the model folder's ``config.json``. The graph is checked
    against PyTorch on two clouds before the file is written: the largest absolute difference is
    returned (``max_abs_diff``) and logged. ``verify``: files or folders to compare the written
    graph on (prepared as prediction prepares them): ``verify_max_abs_diff``, ``verify_same_class``
    (classifier) and ``verify_files`` are added. Returns ``{path, kind, max_abs_diff, ...}``."""
    from engine.features import find_config, load_point_encoder
    from engine.finetune import fps_to
    from engine.onnx_runtime import GRAPH_KEY, METADATA_KEY, OUTPUT_NAMES, metadata_text
    from engine.predict import Predictor

    onnx = _require_onnx()
    ckpt = load_checkpoint_file(ckpt_path, trust=trust)
    run_cfg, _ = find_config(ckpt_path, ckpt, config)
    kind = "features" if features else "classification"
    if features:
        extractor = load_point_encoder(ckpt_path, config=config, device="cpu", npoints=npoints or 1024, trust=trust,
                                       logger=logger)
        module: nn.Module = FeatureGraph(extractor.encoder)
        data = folder_config(ckpt, ckpt_path, run_cfg, encoder_only=True)
        sample_points = extractor.npoints
        encoder = extractor.encoder
    else:
        if checkpoint_kind(state_dict_of(ckpt, ckpt_path)) != "classifier":
            raise CheckpointError(f"checkpoint '{ckpt_path}' is no classifier; export its encoder's features graph "
                                  f"with --features, or a fine-tuned checkpoint (ckpt-best.pth of --finetune_model)")
        predictor = Predictor.from_checkpoint(ckpt_path, device="cpu", config=config, trust=trust, logger=logger)
        module = predictor.model
        data = folder_config(ckpt, ckpt_path, run_cfg)
        sample_points = predictor.npoints
        encoder = predictor.model
    min_points = max(int(encoder.group_divider.num_group), int(encoder.group_divider.group_size))
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, sample_points, 3, generator=gen)
    example = example / example.norm(dim=-1).amax(dim=1).view(-1, 1, 1)  # two clouds in the unit sphere
    program = _onnx_program(module, example, OUTPUT_NAMES[kind], min_points)
    proto = program.model_proto
    for key, value in ((METADATA_KEY, metadata_text(data)), (GRAPH_KEY, kind)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = PROJECT
    proto.doc_string = f"Inter-MAE {kind} graph of {os.path.basename(str(ckpt_path))}: points (batch, points, 3) -> " \
                       f"{OUTPUT_NAMES[kind]}"
    onnx.checker.check_model(proto)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # checked on onnxruntime before it becomes `out`
        trial = os.path.join(tmp, "model.onnx")
        onnx.save_model(proto, trial)
        diff = _compare(trial, module, fps_to(example, sample_points))
        with open(trial, "rb") as f:
            graph_bytes = f.read()
        atomic_write(out, lambda f: f.write(graph_bytes))
    print_log(f"[export] {kind} graph of {ckpt_path} -> {out} ({os.path.getsize(out) / 2**20:.1f} MiB; input "
              f"'points' (batch, points >= {min_points}, 3)); onnxruntime vs PyTorch on 2 clouds of {sample_points} "
              f"points: largest absolute difference {diff:.2e}", logger=logger)
    info = {"path": out, "kind": kind, "max_abs_diff": diff, "min_points": min_points, "npoints": sample_points}
    if verify:
        info.update(verify_onnx(out, extractor if features else predictor, verify, logger))
    return info


def verify_onnx(path: str, reference: Any, inputs: Sequence[str], logger=None) -> Dict[str, Any]:
    """The graph ``path`` against ``reference`` (the :class:`engine.predict.Predictor` or
    :class:`engine.features.PointFeatureExtractor` it was exported from) on the files ``inputs``,
    each prepared once by the reference's own code: the largest absolute difference of the outputs
    and, for logits, whether every predicted class is the same. Logged in one line."""
    from engine.features import PointFeatureExtractor, extract_files
    from engine.finetune import fps_to
    from engine.onnx_runtime import OnnxFeatureExtractor, OnnxGraph
    from engine.predict import list_inputs

    graph = OnnxGraph(path)
    if isinstance(reference, PointFeatureExtractor):
        want, names = extract_files(reference, list(inputs), progress=False)
        got, _ = extract_files(OnnxFeatureExtractor(graph, reference.npoints, path), list(inputs), progress=False)
        result = {"verify_files": len(names), "verify_max_abs_diff": float(np.abs(got - want).max(initial=0.0))}
    else:
        clouds = []
        for file, _ in list_inputs(list(inputs)):
            try:
                clouds.append(reference.read(file))
            except BadFileError:  # skipped, as prediction skips it
                continue
        diff, same = 0.0, True
        for size in sorted({c.shape[0] for c in clouds}):
            group = [c for c in clouds if c.shape[0] == size]
            for start in range(0, len(group), 32):
                pts = fps_to(torch.from_numpy(np.stack(group[start:start + 32])), reference.npoints)
                with torch.no_grad():
                    want = reference.model(pts).float().numpy()
                got = graph.run(pts)
                diff = max(diff, float(np.abs(got - want).max()))
                same = same and bool((got.argmax(1) == want.argmax(1)).all())
        result = {"verify_files": len(clouds), "verify_max_abs_diff": diff, "verify_same_class": same}
    print_log(f"[export] {path} on {result['verify_files']} files: largest absolute difference to PyTorch "
              f"{result['verify_max_abs_diff']:.2e}"
              + ("" if "verify_same_class" not in result else
                 f"; every predicted class the same: {'yes' if result['verify_same_class'] else 'NO'}"), logger=logger)
    return result


def _compare(path: str, module: nn.Module, points: Tensor) -> float:
    from engine.onnx_runtime import OnnxGraph

    with torch.no_grad():
        ref = module.eval()(points).float().numpy()
    got = OnnxGraph(path).run(points)
    return float(np.abs(got - ref).max())


def _require_onnx():
    from engine.onnx_runtime import require

    return require("onnx", "exporting to ONNX")


__all__ = ["folder_config", "model_card", "export_model_folder", "push_to_hub", "FeatureGraph", "export_onnx_file",
           "project_version", "project_license"]
