"""Run settings: every choice a run makes, resolved once, in one place.

A command script parses its flags, loads and validates its config (``utils.config``), then calls
:func:`build_run_settings` (``main.py``) or :func:`build_partseg_settings`
(``segmentation/main.py``). The result, a frozen :class:`RunSettings`, is handed to the job, the
builders and the engine, which read nothing else: no ``args``, no environment, no module state.
This is the only module that reads the ``argparse`` namespace.

Where each setting comes from (the first that is given wins: flag, config key, environment,
default) is described once, in :data:`utils.settings_table.SETTINGS`; :func:`choose_setting`
resolves from it, and docs/ARCHITECTURE.md#where-each-setting-comes-from shows it as a table.

``RunSettings.sources`` records, for each of these, which one it was (logged at start-up).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from utils.logger import print_log
from utils.misc import resolve_device
from utils.overrides import resolve_data_root
from utils.schema import ConfigError, origin_of
from utils.settings_table import BOOLEAN_WORDS, CHOICE_KEYS, SETTING

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# The released pre-training writes ckpt-epoch-XXX when ``epoch % 10 == 0 and epoch >= 250``
# (tools/runner_pretrain.py, epochs counted from 0).
RELEASED_CKPT_PERIOD, RELEASED_CKPT_FROM = 10, 250


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Everything a job needs besides the config sections that describe the model and the data."""

    job: str  # pretrain | finetune | test | partseg | partseg_test
    # where the run writes
    experiment_path: str
    tfboard_path: Optional[str]
    log_name: str
    config_path: str
    command: str = ""
    # what it starts from
    ckpts: Optional[str] = None
    start_ckpts: Optional[str] = None
    resume: str = SETTING["resume"].default  # no | yes | auto (yes when the run has a ckpt-last, else a new run)
    overwrite: bool = False
    partial_load: bool = False
    trust_checkpoint: bool = SETTING["trust_checkpoint"].default
    # device and arithmetic
    device: torch.device = torch.device("cpu")
    amp: str = SETTING["amp"].default  # what was asked for
    amp_dtype: Optional[torch.dtype] = None  # what runs (None: fp32), see resolve_amp
    fps_backend: str = SETTING["fps_backend"].default
    embed_compute: str = SETTING["embed_compute"].default
    bn_recalibration: str = SETTING["bn_recalibration"].default  # auto | on | off (engine/batchnorm.py)
    # processes
    distributed: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    sync_bn: bool = False
    num_workers: int = 0
    # randomness
    seed: int = SETTING["seed"].default
    deterministic: bool = False
    # schedule and checkpoints
    max_epoch: int = 0
    n_epochs: int = 0
    epoch_count: str = SETTING["epoch_count"].default
    lr_schedule: str = SETTING["lr_schedule"].default
    val_freq: int = SETTING["val_freq"].default
    ckpt_period: int = 0
    ckpt_from: int = 0
    accum: int = 1
    clip: float = 0.0
    # evaluation
    vote: bool = False
    few_shot: Optional[Tuple[int, int, int]] = None  # (way, shot, fold)
    # display and data
    progress: bool = SETTING["progress"].default
    data_root: Optional[str] = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def model_switches(self) -> Dict[str, str]:
        """The model constructor's compute switches (how, not what, it computes)."""
        return {"fps_backend": self.fps_backend, "embed_compute": self.embed_compute}

    def replace(self, **changes) -> "RunSettings":
        return dataclasses.replace(self, **changes)

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """One line: the device and arithmetic settings and where each came from."""
        parts = [f"{name}: {getattr(self, name)} ({self.sources.get(name, 'default')})"
                 for name in ("device", "amp", "fps_backend", "embed_compute", "n_epochs", "lr_schedule", "seed",
                              "bn_recalibration")]
        if self.amp_dtype is None and self.amp != "off":
            parts[1] = f"amp: {self.amp} refused, fp32 ({self.sources.get('amp', 'default')})"
        return "Settings: " + "; ".join(parts)


@dataclass(frozen=True, kw_only=True)
class PartSegSettings(RunSettings):
    """A segmentation run: :class:`RunSettings` plus its data and optimisation flags."""

    root: str = ""
    npoint: int = 2048
    batch_size: int = 16
    vis: int = 0
    ckpt_dir: str = ""
    log_dir: str = ""


# ------------------------------------------------------------------------------------ resolving
def amp_mode(cli: Optional[str], config_value=None) -> str:
    """``off``, ``bf16`` or ``fp16``: the ``--amp`` flag when given, else the config's ``amp``
    (``true`` means bf16, as before fp16 existed)."""
    value = cli if cli is not None else config_value
    if value is None or value is False:
        return "off"
    if value is True:
        return "bf16"
    if str(value) not in AMP_DTYPES:
        raise ConfigError(f"amp: expected one of off, bf16, fp16 (or true / false), got {value!r}")
    return str(value)


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: without them bf16 matmuls fall back to slow reference kernels."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_amp(mode: str, device: torch.device, logger=None) -> Optional[torch.dtype]:
    """The autocast dtype for ``mode`` on ``device``, or None (fp32). A precision the device
    cannot run fast is not used: one log line says why and the run continues in fp32."""
    dtype = AMP_DTYPES[mode]
    reason = None
    if dtype is torch.float16 and device.type != "cuda":
        reason = f"fp16 autocast (with loss scaling) needs a CUDA device, not {device.type}"
    elif dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        reason = f"{torch.cuda.get_device_name(device)} has no bf16 support; use --amp fp16"
    elif dtype is torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        reason = ("this CPU has no native bf16 instructions (avx512_bf16 / AMX), where bf16 autocast runs "
                  "about 16x slower than fp32")
    elif dtype is not None and device.type not in ("cuda", "cpu"):
        reason = f"autocast is not set up for {device.type}"
    if reason:
        print_log(f"--amp {mode} refused: {reason}; training in fp32", logger=logger)
        return None
    return dtype


def progress_enabled(no_progress: bool) -> bool:
    """Progress bars: on unless ``--no_progress`` or stderr is not a terminal (logs redirected to a file)."""
    return not no_progress and sys.stderr.isatty()


def choose_setting(name: str, args: argparse.Namespace, config: Optional[Mapping] = None) -> Tuple[Any, str]:
    """(value, where it came from) of the setting ``name`` (:data:`utils.settings_table.SETTINGS`):
    its flag, else its config key, else its environment variable, else its default. An
    environment value outside the setting's choices is a ConfigError naming it."""
    setting = SETTING[name]
    flag = getattr(args, name, None)
    if flag is not None:
        return flag, setting.flag[0]
    if config is not None and setting.key and config.get(setting.key) is not None:
        return config[setting.key], f"config {setting.key}"
    if setting.env is not None and os.environ.get(setting.env, "").strip():
        value = os.environ[setting.env].strip()
        if setting.choices and value not in setting.choices:
            raise ConfigError(f"${setting.env} = {value!r}: expected one of {list(setting.choices)}")
        return value, f"${setting.env}"
    return setting.default, "default"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


_capped_logged: set = set()


def worker_count(requested: int, logger=None) -> int:
    """``requested`` data-loading workers capped to :func:`usable_cores` (more only compete for the
    same cores); one log line the first time a request is capped."""
    requested = max(0, int(requested or 0))
    cores = usable_cores()
    if requested <= cores:
        return requested
    if (requested, cores) not in _capped_logged:
        _capped_logged.add((requested, cores))
        print_log(f"num_workers {requested} capped to {cores}: this process may use {cores} CPU core(s)", logger=logger)
    return cores


def epochs_to_run(max_epoch: int, epoch_count: str) -> int:
    """Epochs a run trains from epoch 0: ``max_epoch + 1`` with ``epoch_count: released`` (the
    released ``range(start_epoch, max_epoch + 1)``), ``max_epoch`` with ``exact``."""
    return int(max_epoch) + (1 if epoch_count == "released" else 0)


def _runtime(args: argparse.Namespace, config: Mapping, logger=None) -> Dict[str, Any]:
    """The device / arithmetic / process settings shared by every job, with their sources."""
    sources: Dict[str, str] = {}
    local_rank = int(os.environ.get("LOCAL_RANK", getattr(args, "local_rank", 0) or 0))
    device_flag = getattr(args, "device", None)
    if device_flag is None and getattr(args, "gpu", None) is not None:
        device_flag, sources["device"] = f"cuda:{args.gpu}", "--gpu"
    device = resolve_device(device_flag, local_rank)
    sources.setdefault("device", "--device" if device_flag not in (None, "", "auto") else "default")
    amp, sources["amp"] = choose_setting("amp", args, config)
    amp = amp_mode(None, amp)
    fps_backend, sources["fps_backend"] = choose_setting("fps_backend", args, config)
    embed, sources["embed_compute"] = choose_setting("embed_compute", args, config)
    bn_recalibration, sources["bn_recalibration"] = choose_setting("bn_recalibration", args, config)
    bn_recalibration = BOOLEAN_WORDS["bn_recalibration"].get(bn_recalibration, bn_recalibration)  # YAML on / off
    for name, value in (("amp", amp), ("fps_backend", fps_backend), ("embed_compute", embed),
                        ("bn_recalibration", bn_recalibration)):
        if value not in CHOICE_KEYS[name]:
            raise ConfigError(f"'{name}' = {value!r}: expected one of {list(CHOICE_KEYS[name])}", origin_of(config))
    from utils.dist_utils import get_dist_info

    rank, world_size = get_dist_info()
    num_workers = worker_count(getattr(args, "num_workers", 0), logger)
    sources["seed"] = "--seed" if getattr(args, "seed", 0) else "default"
    return dict(
        device=device, amp=amp, amp_dtype=resolve_amp(amp, device, logger), fps_backend=fps_backend, embed_compute=embed,
        bn_recalibration=bn_recalibration,
        distributed=getattr(args, "launcher", "none") != "none", rank=rank, world_size=world_size,
        local_rank=local_rank, sync_bn=bool(getattr(args, "sync_bn", False)),
        num_workers=num_workers, seed=int(getattr(args, "seed", 0)),
        deterministic=bool(getattr(args, "deterministic", False)),
        progress=progress_enabled(bool(getattr(args, "no_progress", False))),
        trust_checkpoint=bool(getattr(args, "trust_checkpoint", False)),
        partial_load=bool(getattr(args, "partial_load", False)),
        command=" ".join(sys.argv), sources=sources,
    )


def resume_mode(value: Any) -> str:
    """``--resume`` (``True``: yes), ``--resume auto`` or absent (``False`` / None: no)."""
    if value in (None, False, "no"):
        return "no"
    if value in (True, "yes"):
        return "yes"
    if value == "auto":
        return "auto"
    raise ConfigError(f"--resume {value!r}: expected nothing (continue the run) or 'auto'")


def experiment_paths(args: argparse.Namespace) -> Tuple[str, str, str]:
    """(experiment_path, tfboard_path, log name) of a ``main.py`` run: ``<experiment_root>/<config
    stem>/<exp_name>`` (``test_`` before the name with --test, ``_<mode>`` after it with --mode); a
    saved run config (``.../<stem>/<name>/config.yaml``) keeps its run's stem."""
    exp_name = args.exp_name
    if args.test:
        exp_name = "test_" + exp_name
    if getattr(args, "mode", None) is not None:
        exp_name = exp_name + "_" + args.mode
    stem = Path(args.config).stem
    saved = Path(args.config).name in ("config.yaml", "config.json")
    if (args.resume or args.config_from_run) and saved:
        stem = Path(args.config).parent.parent.name
    elif args.config_from_run:  # the .json beside a .safetensors export
        stem = Path(args.ckpts).stem
    return (os.path.join(args.experiment_root, stem, exp_name),
            os.path.join(args.experiment_root, stem, "TFBoard", exp_name), stem)


def build_run_settings(args: argparse.Namespace, config: Mapping, job: str, logger=None) -> RunSettings:
    """The settings of a ``main.py`` run (``job``: pretrain, finetune or test) from its flags and its
    validated config. Raises ConfigError for a value outside its choices."""
    runtime = _runtime(args, config, logger)
    sources = dict(runtime.pop("sources"))
    experiment_path, tfboard_path, log_name = experiment_paths(args)
    epoch_count = config.get("epoch_count") or SETTING["epoch_count"].default
    lr_schedule = config.get("lr_schedule") or SETTING["lr_schedule"].default
    max_epoch = int(config.get("max_epoch", 0) or 0)
    sources.update(n_epochs="config max_epoch, epoch_count", lr_schedule="config lr_schedule"
                   if config.get("lr_schedule") else "default")
    period_default, from_default = (RELEASED_CKPT_PERIOD, RELEASED_CKPT_FROM) if job == "pretrain" else (0, 0)
    few_shot = (args.way, args.shot, args.fold) if getattr(args, "shot", -1) != -1 else None
    data_root, root_source = resolve_data_root(getattr(args, "data_root", None))
    if data_root:
        sources["data_root"] = root_source
    return RunSettings(
        job=job, experiment_path=experiment_path, tfboard_path=None if job == "test" else tfboard_path,
        log_name=log_name, config_path=args.config, ckpts=args.ckpts, start_ckpts=args.start_ckpts,
        resume=resume_mode(args.resume), overwrite=bool(args.overwrite),
        max_epoch=max_epoch, n_epochs=epochs_to_run(max_epoch, epoch_count), epoch_count=epoch_count,
        lr_schedule=lr_schedule, val_freq=int(args.val_freq),
        ckpt_period=int(config.get("ckpt_period", period_default) or 0),
        ckpt_from=int(config.get("ckpt_from", from_default) or 0),
        accum=int(config.get("step_per_update", 1) or 1), clip=float(config.get("grad_norm_clip", 0) or 0),
        vote=bool(args.vote), few_shot=few_shot, data_root=data_root, sources=sources, **runtime)


def build_partseg_settings(args: argparse.Namespace, config: Mapping, logger=None) -> PartSegSettings:
    """The settings of a ``segmentation/main.py`` run from its flags and the config they map onto
    (:func:`engine.partseg.config_from_args`)."""
    runtime = _runtime(args, config, logger)
    sources = dict(runtime.pop("sources"))
    run_dir = Path(args.log_root) / "part_seg" / args.log_dir
    lr_schedule = config.get("lr_schedule", "exact")
    sources["lr_schedule"] = "--lr_schedule"
    max_epoch = int(config.get("max_epoch", 0) or 0)
    return PartSegSettings(
        job="partseg_test" if args.test else "partseg", experiment_path=str(run_dir),
        tfboard_path=str(run_dir / "logs"), log_name="part_seg", config_path=str(run_dir / "config.yaml"),
        ckpts=args.ckpts, resume=resume_mode(getattr(args, "resume", False)), overwrite=bool(args.overwrite),
        max_epoch=max_epoch, n_epochs=max_epoch, epoch_count="exact", lr_schedule=lr_schedule, val_freq=1,
        ckpt_period=0, ckpt_from=0, accum=1, clip=float(config.get("grad_norm_clip", 0) or 0),
        root=str(config.seg_root), npoint=int(config.npoints), batch_size=int(config.get("total_bs", args.batch_size)),
        vis=int(getattr(args, "vis", 0)),
        ckpt_dir=str(run_dir / "checkpoints"), log_dir=str(run_dir / "logs"), sources=sources, **runtime)


def build_tool_settings(args: argparse.Namespace, config: Mapping, tool: str, logger=None) -> RunSettings:
    """The settings of a tool that runs a model without training it (``tools/svm.py``,
    ``tools/tsne.py``, ``main_vis.py``, ``tools/predict.py``): device, arithmetic, workers, seed,
    progress, checkpoint trust."""
    runtime = _runtime(args, config, logger)
    return RunSettings(job=tool, experiment_path=str(getattr(args, "experiment_path", "") or ""), tfboard_path=None,
                       log_name=tool, config_path=str(getattr(args, "config", "") or ""),
                       ckpts=getattr(args, "ckpts", None), **runtime)


# ------------------------------------------------------------------------------- segmentation
def partseg_config(args: argparse.Namespace):
    """The config ``segmentation/main.py``'s flags map onto (saved as the run's config.yaml and in
    every checkpoint): the ``model`` section of the registered ``PartSegTransformer``, AdamW with the
    released cosine schedule, the epochs, batch size, points and data folder. ``model.patch_embed``
    may still be ``auto`` (resolved from --ckpts by the job). On ``--resume`` the run's saved
    config.yaml, with ``--root`` when given."""
    from easydict import EasyDict

    from utils.config import cfg_from_yaml_file
    from utils.schema import _set_origin

    run_dir = Path(args.log_root) / "part_seg" / args.log_dir
    if getattr(args, "resume", False):
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: no saved config at {saved}; is --log_dir right?")
        config = cfg_from_yaml_file(saved)
        if getattr(args, "root_given", False):
            config.seg_root = args.root
        return config
    model = {"NAME": "PartSegTransformer", "trans_dim": args.trans_dim, "depth": args.depth,
             "num_heads": args.num_heads, "drop_path_rate": args.drop_path_rate, "num_group": args.num_group,
             "group_size": args.group_size, "patch_embed": args.patch_embed,
             "return_layers": list(args.return_layers) if args.return_layers is not None else None,
             "normal": bool(args.normal), "init": getattr(args, "init", "released")}
    config = EasyDict({
        "model": model,
        "optimizer": {"type": "AdamW", "kwargs": {"lr": args.learning_rate, "weight_decay": args.weight_decay}},
        "scheduler": {"type": "CosLR", "kwargs": {"epochs": args.epoch, "initial_epochs": args.warmup_epoch}},
        "max_epoch": args.epoch, "epoch_count": "exact", "lr_schedule": getattr(args, "lr_schedule", "exact"),
        "grad_norm_clip": args.clip, "total_bs": args.batch_size, "npoints": args.npoint, "seg_root": args.root,
    })
    _set_origin(config, "segmentation/main.py flags")
    return config

