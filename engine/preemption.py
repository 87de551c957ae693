"""Stopping a training run cleanly on SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C).

While :func:`catch_stop_signals` is active, the first SIGTERM / SIGINT only sets a flag: the
training step under way finishes, :func:`engine.engine.train_one_epoch` returns after it, the job
writes ``ckpt-last`` with the position inside the epoch, and raises :class:`Preempted`. The
command prints one line (also in the run's log) with the resume command and exits with 128 + the
signal number (143 for SIGTERM, 130 for SIGINT).

Before the first training step (the start-up: config, data scan, building the model, loading a
checkpoint) there is no step to finish and nothing to save: a signal stops the run at once, with
one line and the same exit status (the lock is released on the way out). A second SIGTERM / SIGINT
always stops at once the same way; a third gets the default action (a hard kill).

Under torch.distributed every process gets the signal from the launcher; the processes agree on
stopping after the same step (:meth:`StopRequest.agreed`, one all-reduce per optimizer step).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

import torch

from utils.cli import InputError
from utils.dist_utils import all_reduce_sum, is_dist
from utils.logger import print_log

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(InputError):
    """The run stopped on a signal after writing its ``ckpt-last``; ``exit_status`` is 128 + signum."""

    def __init__(self, message: str, signum: int = int(signal.SIGTERM), logged: bool = True):
        super().__init__(message)
        self.signum = int(signum)
        self.logged = logged  # False: not printed yet (utils.cli.run_main prints it)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Set by a stop signal; read by the training loop after each optimizer step. Until
    :meth:`defer` is called (by the first training epoch), a signal stops at once."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.deferring = False

    def defer(self) -> None:
        """From now on a first signal only sets the flag (the training step under way finishes)."""
        self.deferring = True

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        self.signum = int(signum)

    def agreed(self, device: torch.device) -> bool:
        """Whether any process was asked to stop (collective under torch.distributed); the signal
        number is then known on every process."""
        if not is_dist():
            return self.requested
        flag = torch.tensor([float(self.signum or 0)], device=device)
        signum = int(all_reduce_sum(flag.clone().clamp_(max=1.0)).item() > 0)
        if signum and self.signum is None:
            self.signum = int(signal.SIGTERM)
        return bool(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "no signal"


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    """Within the block, SIGTERM / SIGINT set the yielded :class:`StopRequest` (the first time; a
    second signal gets the previous handler). Outside the main thread nothing is installed."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked worker (data loader, scan): its parent stops it
            return
        second = stop.requested
        stop.request(signum)
        if stop.deferring and not second:
            return
        for sig in STOP_SIGNALS:  # a further signal: the default action
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        name = signal.Signals(signum).name
        when = ("a second stop signal" if second else
                "before the first training step (start-up: data, model, checkpoint); nothing to save")
        raise Preempted(f"stopped by {name} at once: {when}", signum, logged=False)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_command(command: str) -> str:
    """The command line that continues a run: the run's own, with ``--resume`` (once)."""
    words = command.split()
    return command if "--resume" in words else f"{command} --resume"


def preempted(stop: StopRequest, settings, epoch: int, step: int, n_batches: int, logger=None) -> Preempted:
    """The one line (console and run log) after a stop's ckpt-last was written, as the exception to raise."""
    message = (f"stopped by {stop.name} after batch {step}/{n_batches} of epoch {epoch}; "
               f"{settings.experiment_path}/ckpt-last.pth holds the run up to there. "
               f"Continue with: {resume_command(settings.command)}")
    print_log(message, logger=logger)
    return Preempted(message, stop.signum or int(signal.SIGTERM))

