"""Logging: console and file on rank 0, nothing on other ranks (released function names).

A run's logger (named for its config) writes the console and the run's log file. Library modules
(the datasets) log through :func:`library_logger` names, children of :data:`PROJECT_LOGGER`: they
have no handlers of their own and reach the console and, during a run, the same log file through
the project logger, to which :func:`attach_log_file` adds the run's file."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch.distributed as dist

from utils.text import printable

_initialized: set = set()
PROJECT_LOGGER = "intermae"
_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class SafeFormatter(logging.Formatter):
    """The log format, with every control character of a message but newline and tab escaped
    (:func:`utils.text.printable`): an escape sequence from a file name or a class name never
    reaches a terminal or a log file raw."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message, keep_newlines=True)
        return super().formatMessage(record)


def library_logger(name: str) -> str:
    """The logger name of a library module's records (e.g. a dataset's summary line)."""
    return f"{PROJECT_LOGGER}.{name}"


def _rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def get_root_logger(log_file: Optional[str] = None, log_level: int = logging.INFO, name: str = "intermae") -> logging.Logger:
    return get_logger(name=name, log_file=log_file, log_level=log_level)


def get_logger(name: str, log_file: Optional[str] = None, log_level: int = logging.INFO) -> logging.Logger:
    """A logger writing to the console and, on rank 0, to ``log_file``; quiet on other ranks.
    A :func:`library_logger` name gets no handlers: its records go through the project logger."""
    if name.startswith(PROJECT_LOGGER + "."):
        get_logger(PROJECT_LOGGER)
        return logging.getLogger(name)
    logger = logging.getLogger(name)
    logger.propagate = False
    if name in _initialized and log_file is None:
        return logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    rank = _rank()
    fmt = SafeFormatter(_FORMAT)
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


class _EarlyLines(logging.Handler):
    """Keeps a run's first records (before its log file exists) for :func:`attach_log_file`."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def start_run_logger(name: str) -> logging.Logger:
    """A run's logger before its folder exists (the config is checked first): console as usual,
    and every record kept (the library loggers' too) until :func:`attach_log_file` writes them to
    the run log."""
    # fresh console handlers (on the current stderr) and no file of an earlier run
    loggers = [name] if name == PROJECT_LOGGER else [name, PROJECT_LOGGER]
    _initialized.difference_update(loggers)
    logger = get_logger(name)
    if _rank() == 0:
        early = _EarlyLines()
        for each in loggers:
            get_logger(each).addHandler(early)
    return logger


def attach_log_file(logger: logging.Logger, log_file: str) -> logging.Logger:
    """Add the run's log file to ``logger`` and to the project logger (rank 0), writing the
    records kept since :func:`start_run_logger` first."""
    loggers = [logger] + ([] if logger.name == PROJECT_LOGGER else [logging.getLogger(PROJECT_LOGGER)])
    early = []
    for each in loggers:
        for handler in [h for h in each.handlers if isinstance(h, _EarlyLines)]:
            each.removeHandler(handler)
            early += [handler] if handler not in early else []
    if _rank() != 0:
        return logger
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    file_handler = logging.FileHandler(log_file, "a", encoding="utf-8")
    file_handler.setFormatter(SafeFormatter(_FORMAT))
    for handler in early:
        for record in handler.records:
            file_handler.handle(record)
    for each in loggers:
        each.addHandler(file_handler)
    return logger


def log_to_file(msg: str, logger, level: int = logging.INFO) -> bool:
    """Write ``msg`` to the log file(s) of ``logger`` (a Logger or a name) only, not to the console
    (e.g. per-category figures). Returns False when the logger writes no file (nothing is written)."""
    if isinstance(logger, str):
        logger = get_logger(logger)
    if not isinstance(logger, logging.Logger):
        return False
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if files and logger.isEnabledFor(level):
        record = logger.makeRecord(logger.name, level, "(file)", 0, msg, None, None)
        for handler in files:
            if record.levelno >= handler.level:
                handler.handle(record)
    return bool(files)


def print_log(msg: str, logger=None, level: int = logging.INFO, file_only: bool = False) -> None:
    """Log ``msg`` through ``logger`` (a Logger or a name); without one, print on rank 0. With
    ``file_only`` the message goes to the logger's log file only (see :func:`log_to_file`)."""
    if file_only:
        log_to_file(msg, logger, level)
        return
    if logger is None:
        if _rank() == 0:
            print(printable(msg, keep_newlines=True), flush=True)
    elif isinstance(logger, logging.Logger):
        logger.log(level, msg)
    elif logger == "silent":
        return
    elif isinstance(logger, str):
        get_logger(logger).log(level, msg)
    else:
        raise TypeError(f"logger should be a logging.Logger, a name, 'silent' or None, not {type(logger)}")
