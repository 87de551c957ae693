"""Logging: console and file on rank 0, nothing on other ranks (released function names)."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch.distributed as dist

_initialized: set = set()


def _rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def get_root_logger(log_file: Optional[str] = None, log_level: int = logging.INFO, name: str = "intermae") -> logging.Logger:
    return get_logger(name=name, log_file=log_file, log_level=log_level)


def get_logger(name: str, log_file: Optional[str] = None, log_level: int = logging.INFO) -> logging.Logger:
    """A logger writing to the console and, on rank 0, to ``log_file``; quiet on other ranks."""
    logger = logging.getLogger(name)
    logger.propagate = False
    if name in _initialized and log_file is None:
        return logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    rank = _rank()
    fmt = logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    if rank == 0:
        stream = logging.StreamHandler()
        stream.setFormatter(fmt)
        logger.addHandler(stream)
        if log_file is not None:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            file_handler = logging.FileHandler(log_file, "w")
            file_handler.setFormatter(fmt)
            logger.addHandler(file_handler)
        logger.setLevel(log_level)
    else:
        logger.setLevel(logging.ERROR)
    _initialized.add(name)
    return logger


def print_log(msg: str, logger=None, level: int = logging.INFO) -> None:
    """Log ``msg`` through ``logger`` (a Logger or a name); without one, print on rank 0."""
    if logger is None:
        if _rank() == 0:
            print(msg, flush=True)
    elif isinstance(logger, logging.Logger):
        logger.log(level, msg)
    elif logger == "silent":
        return
    elif isinstance(logger, str):
        get_logger(logger).log(level, msg)
    else:
        raise TypeError(f"logger should be a logging.Logger, a name, 'silent' or None, not {type(logger)}")
