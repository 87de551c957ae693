"""The one skeleton of every command that starts a run (``main.py``, ``segmentation/main.py``):

processes (``--launcher pytorch``) -> stop signals -> settings (the command's own ``prepare``:
flags, config, settings, data checks) -> run directory and its lock (rank 0) -> log file -> saved
``config.yaml`` -> the start-up lines and the seed -> the job.

Stop signals are caught for the whole command: before the first training step a SIGTERM / SIGINT
stops it at once with one line (the lock released on the way out), afterwards after the step under
way with ``ckpt-last`` written (:mod:`engine.preemption`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch

from engine.preemption import StopRequest, catch_stop_signals
from extensions.pointops import configured_backend, resolve_fps_backend
from utils import dist_utils
from utils.cli import InputError
from utils.config import save_run_config
from utils.logger import attach_log_file, print_log, start_run_logger
from utils.misc import set_random_seed, warn_if_no_gpu
from utils.rundir import release_run_lock
from utils.settings import RunSettings

T = TypeVar("T")


@dataclass
class RunStart:
    """What a command's ``prepare`` found: the run's settings and config, ``open_dir`` (rank 0:
    refuse another run's checkpoints, make the run directory, take the lock; returns the lock path),
    the log file, whether to write ``config.yaml`` (``keep_previous``: an earlier one is kept as
    ``config.resume-<N>.yaml``), and ``before_save`` (rank 0, run before it is written, whether
    or not it is)."""

    settings: RunSettings
    config: Any
    open_dir: Callable[[], str]
    log_file: str
    save_config: bool = True
    keep_previous: bool = False
    before_save: Optional[Callable[[], None]] = None


def run_command(launcher: str, log_name: str, prepare: Callable[[Any], RunStart],
                job: Callable[[RunSettings, Any, StopRequest, Any], T]) -> T:
    """``prepare(logger) -> RunStart``, then the run directory, log, config.yaml and
    ``job(settings, config, stop, logger)`` (see the module docstring). An input error is also
    written to the run's log, in the words the console shows."""
    if launcher != "none":
        dist_utils.init_dist(launcher)
    try:
        with catch_stop_signals() as stop:
            logger = start_run_logger(log_name)
            start = prepare(logger)
            settings = start.settings
            # Rank 0 makes the directory and takes its lock; a refusal (another run's checkpoints, a
            # live lock) is raised on every process, so none waits in a collective for a rank 0 that stopped.
            lock = dist_utils.run_on_rank0(start.open_dir)
            try:
                attach_log_file(logger, start.log_file)
                try:
                    if settings.is_main_process:
                        if start.before_save is not None:
                            start.before_save()
                        if start.save_config:
                            save_run_config(settings.experiment_path, start.config, keep_previous=start.keep_previous,
                                            logger=logger)
                    print_log(f"Command: {settings.command}", logger=logger)
                    log_settings(settings, logger)
                    set_random_seed(settings.seed + settings.rank, deterministic=settings.deterministic)
                    return job(settings, start.config, stop, logger)
                except InputError as error:  # the same words in the run log as on the console
                    print_log(f"error: {error} [{type(error).__name__}]", logger=logger, file_only=True)
                    raise
            finally:
                release_run_lock(lock)
    finally:
        if dist_utils.is_dist():
            torch.distributed.destroy_process_group()


def log_settings(settings: RunSettings, logger=None) -> None:
    """The start-up lines of a job: a warning when no GPU was found, the settings and their sources,
    and the FPS backend the model will use on this device."""
    if settings.device.type == "cpu" and settings.sources.get("device") == "default":
        warn_if_no_gpu(None, settings.device, logger)
    backend = resolve_fps_backend(settings.device, configured_backend(settings.device, settings.fps_backend))
    print_log(f"device: {settings.device}; autocast: {_dtype_name(settings.amp_dtype)}; processes: "
              f"{settings.world_size}; FPS backend: {backend}; patch embedding: {settings.embed_compute}", logger=logger)
    print_log(settings.describe(), logger=logger)


def _dtype_name(dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "off")
