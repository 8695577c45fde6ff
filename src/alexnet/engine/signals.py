"""Graceful stop: SIGINT or SIGTERM asks training to stop after the current step.

The first signal sets a flag the training loop reads after every step; the run then
writes a checkpoint and exits with a message that says how to resume. A second SIGINT
interrupts at once (KeyboardInterrupt), for a user who really means it.
"""

from __future__ import annotations

import signal
import threading


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def signum(self) -> int:
        """The number of the signal received, 0 for none."""
        return int(getattr(signal, self.signal_name)) if self.signal_name else 0

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
