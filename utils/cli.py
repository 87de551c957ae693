"""What the command-line entry points share: a wrong input ends in one line, not a traceback.

The errors a user can cause and fix (a config key, a checkpoint file, a data folder, a run
directory, a point-cloud file) derive from :class:`InputError`; their messages already name the
file or key, the value and what was expected. :func:`run_main` prints such an error as
``<script>: error: <message>`` on stderr and exits with status 2, as ``argparse`` does for a bad
flag; also when the error was raised in a DataLoader worker process and re-raised by torch (the
original message, without the worker's traceback). Any other exception (a bug, a diverging loss)
keeps its traceback.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, Dict, NoReturn, Optional, Tuple

from utils.text import MAX_MESSAGE, printable, shorten


class InputError(Exception):
    """Base of the errors that a user's input causes; the message says what to change (at most
    :data:`utils.text.MAX_MESSAGE` characters: a longer one loses its middle)."""

    def __str__(self) -> str:
        return shorten(super().__str__(), MAX_MESSAGE)


# torch.utils.data re-raises a worker's exception as ``exc_type(msg)`` (or, when that fails, as a
# RuntimeError(msg)) with msg = "Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...".
WORKER_ERROR = re.compile(r"^Caught (\w+) (in DataLoader worker process \d+|in pin memory thread[^\n]*?)\.\nOriginal ")


def input_error_classes() -> Dict[str, type]:
    """Every loaded subclass of :class:`InputError`, by class name."""
    found, todo = {}, [InputError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


def unwrap_worker_error(error: BaseException) -> Optional[Tuple[str, str]]:
    """``(class name, original message)`` when ``error`` is an :class:`InputError` raised in a
    DataLoader worker and re-raised by torch (as that class, or as a RuntimeError when the class
    could not be rebuilt from the message); else None."""
    text = str(error)
    m = WORKER_ERROR.match(text)
    cls = input_error_classes().get(m.group(1)) if m else None
    if cls is None:
        return None
    # the worker's traceback ends with the line "<module>.<Class>: <message>" (possibly several lines)
    for label in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = text.rfind("\n" + label)
        if at >= 0:
            return cls.__name__, text[at + 1 + len(label):].strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return cls.__name__, lines[-1].strip()


def exit_on_input_error(error: BaseException, prog: Optional[str] = None) -> NoReturn:
    """Print ``<prog>: error: <message> [<ErrorClass>]`` on stderr and exit with status 2."""
    name, message = unwrap_worker_error(error) or (type(error).__name__, str(error))
    message = printable(shorten(message, MAX_MESSAGE), keep_newlines=True)  # no raw escape sequence on the terminal
    script = sys.argv[0] if not os.path.isabs(sys.argv[0]) else os.path.basename(sys.argv[0])
    print(f"{prog or script or 'inter-mae'}: error: {message} [{name}]", file=sys.stderr)
    raise SystemExit(2) from None


def run_main(main: Callable[[], object], prog: Optional[str] = None):
    """``main()``; an :class:`InputError` (also one raised in a DataLoader worker process) becomes one
    line on stderr and exit status 2 (:func:`exit_on_input_error`)."""
    try:
        return main()
    except InputError as error:
        if hasattr(error, "exit_status"):  # engine.preemption.Preempted: its line is in the console and the log
            if not getattr(error, "logged", True):
                script = sys.argv[0] if not os.path.isabs(sys.argv[0]) else os.path.basename(sys.argv[0])
                print(f"{prog or script or 'inter-mae'}: {error}", file=sys.stderr)
            raise SystemExit(error.exit_status) from None
        exit_on_input_error(error, prog)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (inside one, it stops after the step)
        script = sys.argv[0] if not os.path.isabs(sys.argv[0]) else os.path.basename(sys.argv[0])
        print(f"{prog or script or 'inter-mae'}: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    except RuntimeError as error:
        if unwrap_worker_error(error) is None:
            raise
        exit_on_input_error(error, prog)
