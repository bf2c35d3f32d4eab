"""Making the kernel reuse a pid at once, for tests of what medkit signals after a check."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
"""The last pid the kernel handed out in this pid namespace; root may set it, so the next fork
gets the pid after it (how a test makes a pid be reused at once rather than after a wrap-around)."""

CAN_REUSE_PIDS = os.geteuid() == 0 and NS_LAST_PID.exists()
"""Whether this test run may set NS_LAST_PID (root, and a kernel that has it)."""


def new_group_with_pid(pid: int, tries: int = 200) -> subprocess.Popen[bytes] | None:
    """A `sleep` leading a session (and process group) of its own whose pid is `pid`, or None when
    other forks on the machine kept taking that pid first."""
    for _ in range(tries):
        NS_LAST_PID.write_text(str(pid - 1))
        other = subprocess.Popen(["sleep", "300"], start_new_session=True)
        if other.pid == pid:
            return other
        other.kill()
        other.wait()
    return None
