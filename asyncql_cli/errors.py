"""The user-facing error and the exit codes of the public contract (README, "Exit codes").

Imports nothing of asyncql: every layer may raise `BadInput`.
"""

from __future__ import annotations

EXIT_OK = 0  # finished: budget, time or train.stop_at_return reached
EXIT_ERROR = 1  # anything else; the cause is in train.log
EXIT_BAD_INPUT = 2  # config, env, checkpoint or run dir: one line `asyncql: error: ...`
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, after a clean shutdown and a last checkpoint


class BadInput(Exception):
    """A user error (config, env, checkpoint, cluster): reported as one line, exit code 2."""
