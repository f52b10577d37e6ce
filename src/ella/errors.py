"""Exceptions the CLI turns into exit codes (no torch here: the CLI imports this module)."""

from __future__ import annotations

import signal


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped a training run after a finished step: its resume state is saved
    and the last finished export is left as it was. The CLI exits with 128 + the signal number."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGTERM))
