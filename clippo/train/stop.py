"""Stopping on SIGINT (Ctrl-C) or SIGTERM (what a cluster sends before preemption).

The signal only sets a flag; the trainer finishes the step it is in, all ranks agree on the
step to stop after (the flag travels in the step's all-reduced statistics), a checkpoint of
that step is written, and the process exits with 128 + the signal number (130 for SIGINT, 143
for SIGTERM) after printing the command that resumes. A second signal stops at once.
DataLoader workers ignore both signals: the trainer ends them when it exits.
"""
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):
    """Training stopped on a signal after writing a checkpoint; exit with `exit_code`."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self):
        return 128 + self.signum


class StopSignals:
    """Context manager: while inside, SIGINT/SIGTERM set `signum` instead of ending the
    process (a second one ends it as the default handler would)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def ignore_stop_signals(worker_id=None):
    """worker_init_fn of the DataLoaders: a Ctrl-C or a SIGTERM sent to the whole process
    group must not end a worker while the trainer finishes its step and saves."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
