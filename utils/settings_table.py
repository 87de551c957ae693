"""Every setting of a run, described once: its config key, type and range or choices, flag,
environment variable, default and help.

Derived from :data:`SETTINGS`: the top-level config keys and their value checks
(:data:`TOP_LEVEL_KEYS`, :data:`JOB_REQUIRED_KEYS`, :data:`TOP_LEVEL_NUMBERS`, :data:`CHOICE_KEYS`,
:data:`BOOLEAN_WORDS`,
used by :mod:`utils.validate`), the shared command-line flags (:func:`flag_spec`, used by
:mod:`utils.parser`), the resolution of :class:`utils.settings.RunSettings` (flag, else config
key, else environment, else default: :func:`utils.settings.choose_setting`) and the
"where each setting comes from" table of docs/ARCHITECTURE.md (:func:`markdown_table`; a test
compares them). Imports nothing but the standard library: models and ops take their choice words
from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Number:
    """A numeric config value: an integer or not, ``>= low`` (``> low`` with ``low_open``); None
    passes when ``allow_none``."""

    integer: bool = False
    low: Optional[float] = None
    low_open: bool = False
    allow_none: bool = False


@dataclass(frozen=True)
class Setting:
    """One setting. ``key``: its top-level config key (None: no config key); ``flag`` with
    ``flag_kwargs`` / ``flag_help``: its shared command-line flag (argparse); ``env``: the
    environment variable read after the flag and the config; ``choices`` (the default first) or
    ``number``: the values it takes; ``required_by``: the jobs whose config must hold it; ``yaml_words``: YAML 1.1 booleans standing for a choice word
    (``on`` / ``off``); ``label``: its row in the docs table (None: not a row there), whose cells
    are derived unless ``*_text`` says more."""

    name: str
    help: str = ""
    key: Optional[str] = None
    default: Any = None
    choices: Tuple[str, ...] = ()
    number: Optional[Number] = None
    yaml_words: Mapping[bool, str] = field(default_factory=dict)
    flag: Tuple[str, ...] = ()
    flag_kwargs: Mapping[str, Any] = field(default_factory=dict)
    flag_help: str = ""
    env: Optional[str] = None
    required_by: Tuple[str, ...] = ()
    label: Optional[str] = None
    flag_text: str = ""
    key_text: str = ""
    env_text: str = ""
    default_text: str = ""


JOBS = ("pretrain", "finetune", "test", "partseg", "partseg_test")
TRAINING_JOBS = ("pretrain", "finetune", "partseg")
FPS_BACKEND_ENV = "INTERMAE_FPS_BACKEND"
EMBED_COMPUTE_ENV = "INTERMAE_EMBED_COMPUTE"
DATA_ROOT_ENV = "DATA_ROOT"

# Docs-table rows first, in the table's order; then the config keys without a row of their own.
SETTINGS: Tuple[Setting, ...] = (
    Setting("device", flag=("--device",), flag_kwargs=dict(type=str, default=None),
            flag_help="cuda, cuda:N or cpu (default: CUDA when present)",
            label="device", flag_text="`--device` (segmentation also `--gpu`)",
            env_text="`LOCAL_RANK` picks the GPU under torchrun", default_text="CUDA if present, else CPU"),
    Setting("amp", key="amp", default="off", choices=("off", "bf16", "fp16"), yaml_words={True: "bf16", False: "off"},
            help="mixed precision: off | bf16 | fp16 (true = bf16)",
            flag=("--amp",), flag_kwargs=dict(nargs="?", const="bf16", default=None),
            flag_help="mixed precision: bf16 autocast (--amp alone), fp16 autocast with loss scaling (CUDA), or off",
            label="mixed precision",
            default_text="off (refused in one line where the device cannot run it fast)"),
    Setting("fps_backend", key="fps_backend", default="auto", choices=("auto", "torch", "triton", "pointnet2_ops"),
            help="farthest point sampling on CUDA: auto | torch | triton | pointnet2_ops",
            flag=("--fps_backend",), flag_kwargs=dict(default=None),
            flag_help="farthest point sampling on CUDA: auto (triton when it imports, else torch), torch, triton, "
                      "pointnet2_ops",
            env=FPS_BACKEND_ENV, label="FPS backend (CUDA)", default_text="`auto` (triton when it imports, else torch)"),
    Setting("embed_compute", key="embed_compute", default="fast", choices=("fast", "exact"),
            help="patch-embedding arithmetic: fast (default) | exact (the released order of operations)",
            flag=("--embed_compute",), flag_kwargs=dict(default=None),
            flag_help="patch-embedding arithmetic (same weights, same checkpoints): fast (the attention energy from "
                      "the 128-wide hidden features; equal to exact to ~1e-6 relative, a faster step) or exact (the "
                      "released order of operations)",
            env=EMBED_COMPUTE_ENV, label="patch-embedding arithmetic"),
    Setting("bn_recalibration", key="bn_recalibration", default="auto", choices=("auto", "on", "off"),
            yaml_words={True: "on", False: "off"},
            help="BatchNorm statistics recomputed over training batches with the current weights before they are "
                 "used (validation, the last epoch, checkpoint copies): auto (default: while the initial statistics "
                 "are more than 1 % of a running variance) | on | off",
            flag=("--bn_recalibration",), flag_kwargs=dict(default=None),
            flag_help="recompute the BatchNorm running statistics over training batches (no augmentation) with the "
                      "current weights before validation, the last checkpoint and checkpoint copies: auto (while the "
                      "initial statistics are more than 1 %% of a layer's running variance: short runs), on (every "
                      "time) or off",
            label="BatchNorm recalibration", default_text="`auto` (`engine/batchnorm.py`)"),
    Setting("progress", default=True, flag=("--no_progress",), flag_kwargs=dict(action="store_true"),
            flag_help="no progress bars (they are also off when stderr is not a terminal)",
            label="progress bars", env_text="stderr is a terminal", default_text="on"),
    Setting("num_workers", default=4, flag=("--num_workers",), flag_kwargs=dict(type=int, default=4),
            flag_help="data-loading worker processes, capped to the CPU cores this process may use (one log line "
                      "when capped)",
            label="loader workers", default_text="4, capped to the usable cores"),
    Setting("seed", default=0, flag=("--seed",), flag_kwargs=dict(type=int, default=0), flag_help="random seed",
            label="seed", default_text="0 (process r uses seed + r)"),
    Setting("val_freq", default=1, label="validation period", flag_text="`--val_freq`",
            default_text="1 (rule: `engine.engine.validation_due`)"),
    Setting("n_epochs", label="epochs run", key_text="`max_epoch`, `epoch_count`",
            default_text="`max_epoch + 1` (released count)"),
    Setting("lr_schedule", key="lr_schedule", default="exact", choices=("exact", "released"),
            help="exact (default: epoch e at cosine(e)) | released (the released one-epoch lag)",
            label="schedule", flag_text="segmentation `--lr_schedule`", key_text="`lr_schedule`, `scheduler.kwargs`",
            default_text="`exact`; length follows `max_epoch`"),
    Setting("ckpt_period", key="ckpt_period", number=Number(integer=True, low=0, allow_none=True),
            help="also keep ckpt-epoch-XXX (XXX: the 0-based epoch) every this many epochs from ckpt_from "
                 "(0: never; pre-training default 10, as released)",
            label="ckpt-epoch copies", key_text="`ckpt_period`, `ckpt_from`",
            default_text="pre-training 10 from epoch 250 (released)"),
    Setting("step_per_update", key="step_per_update", number=Number(integer=True, low=1),
            help="gradient accumulation steps",
            label="accumulation, clipping", flag_text="segmentation `--clip`", key_text="`step_per_update`, "
            "`grad_norm_clip`", default_text="1, off"),
    Setting("experiment_path", label="run directory",
            flag_text="`--experiment_root`, `--exp_name` (segmentation `--log_root`, `--log_dir`)",
            key_text="config file stem", default_text="`experiments/<stem>/<exp_name>`"),
    Setting("data_root", flag=("--data_root",), flag_kwargs=dict(type=str, default=None, metavar="DIR"),
            flag_help="folder holding the datasets: every dataset path of the config that starts with data/ is read "
                      "from DIR instead (e.g. data/ModelNet/modelnet40_normal_resampled -> "
                      "DIR/ModelNet/modelnet40_normal_resampled) (default: $DATA_ROOT, else the config's paths as "
                      "written)",
            env=DATA_ROOT_ENV, label="data paths", flag_text="`--data_root` (segmentation `--root`)",
            key_text="dataset `DATA_PATH`, ...", default_text="the config's paths"),
    Setting("resume", default="no", label="resume", flag_text="`--resume`, `--resume auto`", default_text="a new run"),
    Setting("trust_checkpoint", default=False, flag=("--trust_checkpoint",), flag_kwargs=dict(action="store_true"),
            flag_help="load the checkpoint files given to this command with full unpickling (one warning line "
                      "each), which runs any code they hold: only for files you trust. Without it a checkpoint "
                      "holding other Python objects than tensors, plain types and NumPy arrays / scalars is refused "
                      "(docs/security.md)",
            label="checkpoint trust", default_text="weights-only loading"),
    # config keys without a row of their own in the docs table
    # (the keys a job needs, ``required_by``, are checked in this order)
    Setting("model", key="model", help="{NAME: registered model, ...}", required_by=JOBS),
    Setting("dataset", key="dataset", help="{train, val, test, ...: {_base_: dataset yaml, others: {...}}}",
            required_by=("pretrain", "finetune", "test")),
    Setting("optimizer", key="optimizer", help="{type: AdamW|Adam|SGD, kwargs: {...}}",
            required_by=TRAINING_JOBS),
    Setting("scheduler", key="scheduler",
            help="{type: CosLR|none, kwargs: {epochs, initial_epochs, lr_min, warmup_lr_init}}"),
    Setting("max_epoch", key="max_epoch", number=Number(integer=True, low=0), help="number of epochs",
            required_by=TRAINING_JOBS),
    Setting("total_bs", key="total_bs", number=Number(integer=True, low=0, low_open=True),
            help="global batch size (split across processes)", required_by=TRAINING_JOBS),
    Setting("grad_norm_clip", key="grad_norm_clip", number=Number(low=0, allow_none=True),
            help="clip gradients to this L2 norm (0 or absent: no clipping)"),
    Setting("npoints", key="npoints", number=Number(integer=True, low=1), help="points per sample fed to the model",
            required_by=("finetune", "test", "partseg", "partseg_test")),
    Setting("ckpt_from", key="ckpt_from", number=Number(integer=True, low=0),
            help="first epoch (0-based) of ckpt_period's copies (pre-training default 250, as released)"),
    Setting("min_pretrain_steps", key="min_pretrain_steps", number=Number(integer=True, low=0),
            help="pre-training warns when it plans fewer optimizer steps than this (default 1200, from real "
                 "shapes: docs/real-data.md; 0: never)"),
    Setting("svm_validation", key="svm_validation", help="linear-SVM validation of pre-trained features during "
                                                         "pre-training"),
    Setting("epoch_count", key="epoch_count", default="released", choices=("released", "exact"),
            help="released (default: epochs 0..max_epoch, as the released loops) | exact (max_epoch epochs)"),
    Setting("seg_root", key="seg_root", help="part segmentation (segmentation/main.py --root): the ShapeNetPart folder",
            required_by=("partseg", "partseg_test")),
    Setting("voting", key="voting", help="{times: 10, repeats: 299, above: 92.1, above_if_best: 91.0}: voting passes, "
                                         "--test repeats, fine-tuning thresholds"),
    Setting("parts", key="parts", help="part segmentation of a folder (model.NAME: PartSegTransformer): {names, "
                                       "categories, category_parts}, set from the training folder when the run starts"),
)
SETTING: Dict[str, Setting] = {s.name: s for s in SETTINGS}
FLAG_SETTINGS = tuple(s.name for s in SETTINGS if s.flag)  # settings with a shared command-line flag

# ------------------------------------------------------------------------------ derived tables
# Top-level keys a run config may have, with what they mean. Unknown keys are errors.
TOP_LEVEL_KEYS: Dict[str, str] = {s.key: s.help for s in SETTINGS if s.key}
# (key, integer, low, low_open, allow_none): the top-level numbers.
TOP_LEVEL_NUMBERS = tuple((s.key, s.number.integer, s.number.low, s.number.low_open, s.number.allow_none)
                          for s in SETTINGS if s.key and s.number)
# Top-level keys that take one of a few words: key -> the allowed words, the default first.
CHOICE_KEYS: Dict[str, Tuple[str, ...]] = {s.key: s.choices for s in SETTINGS if s.key and s.choices}
# Top-level keys each job needs.
JOB_REQUIRED_KEYS: Dict[str, Tuple[str, ...]] = {job: tuple(s.key for s in SETTINGS if job in s.required_by)
                                                 for job in JOBS}
# Keys whose words YAML 1.1 reads as booleans (amp: true = bf16; bn_recalibration: on / off).
BOOLEAN_WORDS: Dict[str, Mapping[bool, str]] = {s.key: s.yaml_words for s in SETTINGS if s.key and s.yaml_words}

# The words of the compute switches, for the ops and models that take them.
FPS_BACKENDS = SETTING["fps_backend"].choices
EMBED_COMPUTE_MODES = SETTING["embed_compute"].choices
DEFAULT_EMBED_COMPUTE = SETTING["embed_compute"].default


def flag_spec(name: str) -> Tuple[Tuple[str, ...], Dict[str, Any]]:
    """(flags, ``add_argument`` keywords) of setting ``name``'s command-line flag. A flag with choice
    words offers them; its help ends with where the value comes from when the flag is not given."""
    s = SETTING[name]
    kwargs = dict(s.flag_kwargs)
    help_text = s.flag_help
    if s.choices:
        kwargs["choices"] = s.choices
        fallback = [f"the config's {s.key}"] + ([f"${s.env}"] if s.env else []) + [str(s.default)]
        help_text += f" (default: {', else '.join(fallback)})"
    kwargs["help"] = help_text
    return s.flag, kwargs


def _cell(text: str, fallback: Optional[str]) -> str:
    return text or (f"`{fallback}`" if fallback else "-")


def markdown_table() -> str:
    """The "where each setting comes from" table of docs/ARCHITECTURE.md, one row per setting with
    a ``label``: flag, config key, environment variable, default."""
    lines = ["| Setting | Flag | Config key | Environment | Default |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        if s.label is None:
            continue
        default = s.default_text or (f"`{s.default}`" if s.default is not None else "-")
        lines.append(f"| {s.label} | {_cell(s.flag_text, s.flag[0] if s.flag else None)} | "
                     f"{_cell(s.key_text, s.key)} | {_cell(s.env_text, s.env)} | {default} |")
    return "\n".join(lines) + "\n"
