"""Signals to a verified process through a pidfd, so a pid reused after the check is never hit.

Checking a process (its create time, its command line) and then calling kill(pid) leaves a window
in which the process can end and the kernel hand its pid to another process, which the signal
would then reach. A pidfd (Linux 5.3 and later) names one process for good: opened before the
check, it names the process checked, and a signal sent through it once that process has ended
fails instead of reaching the pid's new owner. Without pidfds the pid is signalled as psutil does
it (the create time checked again first, which leaves a window of microseconds).
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import TracebackType

import psutil


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for pid, or None where the kernel or Python has none; NoSuchProcess when no
    process (a zombie included) holds pid."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise psutil.NoSuchProcess(pid) from None
    except (AttributeError, OSError):
        return None


class PinnedProcess:
    """The process holding `pid` now, pinned: `proc` describes it (read after the pin, so a
    check of `proc` is a check of the pinned process) and `send` signals only it.

    Use as a context manager; it closes the pidfd. Raises psutil.NoSuchProcess when no process
    holds pid.
    """

    def __init__(self, pid: int) -> None:
        self._fd = _pidfd_open(pid)
        try:
            self.proc = psutil.Process(pid)
        except BaseException:
            self.close()
            raise

    def send(self, sig: signal.Signals) -> None:
        """Signal the pinned process; psutil.NoSuchProcess once it has ended (even if its pid
        names another process by now), psutil.AccessDenied when the worker may not signal it."""
        if self._fd is None:
            self.proc.send_signal(sig)
            return
        try:
            signal.pidfd_send_signal(self._fd, sig)
        except ProcessLookupError:
            raise psutil.NoSuchProcess(self.proc.pid) from None
        except PermissionError:
            raise psutil.AccessDenied(self.proc.pid) from None

    def alive(self) -> bool:
        """Whether the pinned process still exists: running, or ended and not yet reaped (its
        pid cannot have been reused then)."""
        if self._fd is None:
            return self.proc.is_running()
        try:
            signal.pidfd_send_signal(self._fd, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def close(self) -> None:
        """Release the pidfd (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PinnedProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
