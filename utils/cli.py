"""What the command-line entry points share: a wrong input ends in one line, not a traceback.

The errors a user can cause and fix (a config key, a checkpoint file, a data folder, a run
directory, a point-cloud file) derive from :class:`InputError`; their messages already name the
file or key, the value and what was expected. :func:`run_main` prints such an error as
``<script>: error: <message>`` on stderr and exits with status 2, as ``argparse`` does for a bad
flag. Any other exception (a bug, a diverging loss) keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional


class InputError(Exception):
    """Base of the errors that a user's input causes; the message says what to change."""


def run_main(main: Callable[[], object], prog: Optional[str] = None):
    """``main()``; an :class:`InputError` becomes one line on stderr and exit status 2."""
    try:
        return main()
    except InputError as error:
        script = sys.argv[0] if not os.path.isabs(sys.argv[0]) else os.path.basename(sys.argv[0])
        name = prog or script or "inter-mae"
        print(f"{name}: error: {error} [{type(error).__name__}]", file=sys.stderr)
        raise SystemExit(2) from None
