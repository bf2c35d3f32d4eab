"""Which process a pid file really names, checked before medkit sends it any signal.

A pid alone proves nothing: the service may have died and its pid been reused, or someone may
have written another pid into the file. At spawn medkit records the pid, create time and
command line in a sidecar next to the pid file (`<pid_file>.identity.json`, written
atomically); the pid file itself stays a plain pid, so `kill $(cat demo.pid)` keeps working.
A process is signalled only while it still matches that record or, for a service medkit did
not start (no record for its pid), while its command line is the configured argv and it runs as
the worker's own user (the user medkit would start it as).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from temporalio.exceptions import ApplicationError

from activities.probes import read_pid

IDENTITY_SUFFIX = ".identity.json"
"""Appended to a pid file's path to name the sidecar holding the identity of its process."""

CREATE_TIME_TOLERANCE = 0.05
"""Seconds two readings of one process's create time may differ by (a few clock ticks).

psutil derives it from the boot time, so a step of the wall clock changes it: the process then
no longer matches and is left alone, which fails safe (the restart escalates, nothing is killed).
"""

BOOT_TIME_RESOLUTION = 1.0
"""The kernel reports boot time in whole seconds, so a create time may read up to 1 s early."""


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as medkit saw it when it started it: pid, create time, command line, spawn token."""

    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    spawn_token: str | None = None

    @classmethod
    def of(cls, proc: psutil.Process, spawn_token: str | None = None) -> ProcessIdentity:
        """The identity of a live process (raises psutil errors as psutil does)."""
        with proc.oneshot():
            return cls(proc.pid, proc.create_time(), tuple(proc.cmdline()), spawn_token)

    def matches(self, proc: psutil.Process) -> bool:
        """Whether proc is this very process: same pid, create time and command line."""
        return (proc.pid == self.pid
                and abs(proc.create_time() - self.create_time) <= CREATE_TIME_TOLERANCE
                and tuple(proc.cmdline()) == self.cmdline)

    def to_json(self) -> str:
        """The sidecar's content."""
        return json.dumps({"pid": self.pid, "create_time": self.create_time,
                           "cmdline": list(self.cmdline), "spawn_token": self.spawn_token})

    @classmethod
    def from_json(cls, text: str) -> ProcessIdentity:
        """Parse a sidecar (raises ValueError, KeyError or TypeError when it is malformed)."""
        data = json.loads(text)
        cmdline = data["cmdline"]
        if not isinstance(cmdline, list) or not all(isinstance(arg, str) for arg in cmdline):
            raise ValueError("cmdline must be a list of strings")
        token = data.get("spawn_token")
        return cls(int(data["pid"]), float(data["create_time"]), tuple(cmdline),
                   str(token) if token is not None else None)


EXEC_WAIT = 2.0
"""Seconds spawn waits for a new process's command line to show the program it exec'd."""


def identity_of_new(proc: psutil.Process, argv: Sequence[str], spawn_token: str | None) -> ProcessIdentity:
    """The identity of a process just started with argv, once the kernel shows its command line.

    Popen returns as soon as exec has begun, while /proc/<pid>/cmdline still reads empty; a
    record taken then would never match the process again. Waits (briefly) for argv to show;
    a program that renames itself at once is recorded as it then reads.
    """
    deadline = time.monotonic() + EXEC_WAIT
    while True:
        identity = ProcessIdentity.of(proc, spawn_token)
        if (identity.cmdline and argv_matches(identity.cmdline, argv)) or time.monotonic() > deadline:
            if not identity.cmdline:
                raise psutil.NoSuchProcess(proc.pid, msg="no command line after exec")
            return identity
        time.sleep(0.001)


def identity_file(pid_file: str | Path) -> Path:
    """Where the identity of the process a pid file names is kept."""
    return Path(f"{pid_file}{IDENTITY_SUFFIX}")


def write_atomic(path: Path, text: str) -> None:
    """Replace path's content in one rename, so a reader or a crash never sees half a file.

    The file is the worker's and writable by it alone (0644 at most, whatever the umask allows
    more), as read_identity requires of an identity record it trusts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def record_identity(pid_file: str | Path, identity: ProcessIdentity) -> None:
    """Write the sidecar, then the plain pid file; both atomically, the identity first.

    Identity first: a crash between the two leaves the pid file naming the old pid (dead, or not
    matching) and a sidecar a retry can adopt the new process from.
    """
    write_atomic(identity_file(pid_file), identity.to_json())
    write_atomic(Path(pid_file), f"{identity.pid}\n")


def _written_by_worker(status: os.stat_result) -> bool:
    """Whether a file can only hold what the worker wrote: the worker's user owns it and no one
    else may write it."""
    return status.st_uid == os.geteuid() and not status.st_mode & 0o022


def read_identity(pid_file: str | Path) -> ProcessIdentity | None:
    """The recorded identity for a pid file, or None when there is none, it is unreadable, or it
    is not the worker's own (see _written_by_worker; a symlink is not followed).

    A record is what lets a process be signalled without running argv, and /proc shows anyone
    the pid, create time and command line of any process: a record another user wrote (in a
    directory the service's user also writes, say) could name any process on the host. Such a
    record proves nothing, and the pid is judged as one medkit has no record of (resolve_pid).
    """
    try:
        fd = os.open(identity_file(pid_file), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as record:
            if not _written_by_worker(os.fstat(record.fileno())):
                return None
            return ProcessIdentity.from_json(record.read())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget(pid_file: str | Path) -> None:
    """Remove a pid file and its identity sidecar."""
    Path(pid_file).unlink(missing_ok=True)
    identity_file(pid_file).unlink(missing_ok=True)


def argv_matches(cmdline: Sequence[str], argv: Sequence[str]) -> bool:
    """Whether a command line runs argv: equal arguments and the same program name.

    Compared from the end, so an interpreter the kernel put in front (a `#!` script) and a
    program found through PATH (`sleep` vs `/usr/bin/sleep`) still match.
    """
    if not argv or len(cmdline) < len(argv):
        return False
    tail = list(cmdline[len(cmdline) - len(argv):])
    return os.path.basename(tail[0]) == os.path.basename(argv[0]) and tail[1:] == list(argv[1:])


def unsafe_error(pid: int, why: str) -> ApplicationError:
    """The non-retryable error for a pid medkit must never signal."""
    return ApplicationError(f"refusing to signal pid {pid}: {why}", type="UnsafeProcess",
                            non_retryable=True)


def _unsafe(pid: int) -> str | None:
    """Why pid must never be signalled, or None."""
    if pid <= 1:
        return "pid 0, 1 and negative pids name init or whole process groups"
    me = psutil.Process()
    if pid == me.pid or pid in {thread.id for thread in me.threads()}:
        return "it is the medkit worker itself"
    if pid in {parent.pid for parent in me.parents()}:
        return "it is an ancestor of the medkit worker"
    return None


def refuse_unsafe(pid: int) -> None:
    """Raise UnsafeProcess for init, pid 0 and below, and the worker itself or its ancestors.

    Such a pid in a pid file means the file is wrong (shared with another program, or written by
    hand); stopping it would take the host or medkit down, and no retry can make it right.
    """
    if (why := _unsafe(pid)) is not None:
        raise unsafe_error(pid, why)


def access_denied(pid: int, doing: str, err: psutil.AccessDenied) -> ApplicationError:
    """The non-retryable error for a process the worker is not permitted to inspect or signal."""
    return ApplicationError(f"not permitted to {doing} pid {pid}: {err}", type="AccessDenied",
                            non_retryable=True)


def _user_name(uid: int) -> str:
    """The name of uid, or the number when the system has none for it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def foreign_owner(proc: psutil.Process) -> int | None:
    """The real uid of proc when it is not the worker's own, else None.

    A command line proves nothing about whose process it is: on a root worker, a pid file naming
    another user's copy of the same program would otherwise have it SIGTERMed (or adopted as the
    one a crashed attempt started) and replaced by a copy running as root. medkit starts services
    as its own user, so another user's process is never one it started nor one it would.
    """
    uid: int = proc.uids().real
    return None if uid == os.getuid() else uid


def foreign_error(pid: int, uid: int, argv: Sequence[str]) -> ApplicationError:
    """The non-retryable error for a process that runs the service's argv as another user."""
    return ApplicationError(
        f"not permitted to signal pid {pid}: it runs {argv[0]} as user {_user_name(uid)!r}, not as "
        f"the worker's user {_user_name(os.getuid())!r}, and medkit has no record of starting it "
        "(medkit restarts only what it started or what runs as its own user); left it alone",
        type="AccessDenied", non_retryable=True)


@dataclass(frozen=True)
class Target:
    """What a pid names: `identity` when it is provably the service, else why it is left alone."""

    pid: int | None
    identity: ProcessIdentity | None
    reason: str


def resolve_pid(pid: int | None, pid_file: str | Path, argv: Sequence[str]) -> Target:
    """Whether pid is the service: the sidecar describes it and it still matches, or (no record
    for this pid, e.g. a service started before medkit supervised it) it runs argv as the
    worker's own user.

    Raises UnsafeProcess before looking any further, and AccessDenied when the process cannot be
    inspected or runs argv as another user (see foreign_owner).
    """
    if pid is None:
        return Target(None, None, "was not running (no pid recorded)")
    refuse_unsafe(pid)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return Target(pid, None, "was not running")
        recorded = read_identity(pid_file)
        if recorded is not None and recorded.pid == pid:
            if recorded.matches(proc):
                return Target(pid, recorded, "")
            return Target(pid, None, "is not the process medkit started (its create time or command "
                                     "line differ: the pid was reused); left it alone")
        if argv_matches(proc.cmdline(), argv):
            if (uid := foreign_owner(proc)) is not None:
                raise foreign_error(pid, uid, argv)
            return Target(pid, ProcessIdentity.of(proc), "")
        return Target(pid, None, f"does not run {argv[0]} and medkit has no record of starting it; "
                                 f"left it alone")
    except psutil.NoSuchProcess:
        return Target(pid, None, "was not running")
    except psutil.AccessDenied as err:
        raise access_denied(pid, "inspect", err) from err


def resolve(pid_file: str | Path, argv: Sequence[str]) -> Target:
    """What the pid file names (see resolve_pid)."""
    return resolve_pid(read_pid(str(pid_file)), pid_file, argv)


def still_running(identity: ProcessIdentity) -> bool:
    """Whether the process described by identity still runs (not a zombie, not a reused pid)."""
    try:
        proc = psutil.Process(identity.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and identity.matches(proc)
    except psutil.Error:
        return False


def started_after(argv: Sequence[str], since: float) -> ProcessIdentity | None:
    """The oldest live process of the worker's own user running argv that started at or after
    `since` (a wall-clock time).

    Finds a process a crashed attempt started but had no time to record. Another user's process
    cannot be one the worker started (see foreign_owner), so it is never taken for one.
    """
    earliest = since - BOOT_TIME_RESOLUTION
    found: list[ProcessIdentity] = []
    for proc in psutil.process_iter(["cmdline", "create_time", "status", "uids"]):
        cmdline, created, status, uids = (proc.info["cmdline"], proc.info["create_time"],
                                          proc.info["status"], proc.info["uids"])
        if (cmdline and created is not None and created >= earliest
                and uids is not None and uids.real == os.getuid()
                and status != psutil.STATUS_ZOMBIE and argv_matches(cmdline, argv)
                and not _unsafe(proc.pid)):
            found.append(ProcessIdentity(proc.pid, created, tuple(cmdline)))
    return min(found, key=lambda identity: identity.create_time, default=None)


def _local_host(host: str) -> bool:
    """Whether host is this machine: localhost, a loopback address or an interface's address."""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return True
    return any(addr.address == host for addrs in psutil.net_if_addrs().values() for addr in addrs)


def _listens(conns: Iterable[Any], port: int) -> bool:
    """Whether one of these connections (per-process or system-wide ones) listens on port."""
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def held_by_another(pid: int, host: str, port: int) -> bool:
    """Whether a local socket listens on host:port but neither pid nor its descendants hold it.

    False when host is not this machine or the sockets cannot be inspected: then nothing tells
    which process answers, and the caller relies on the probe and the pid being alive.
    """
    if not _local_host(host):
        return False
    try:
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return False
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            try:
                if _listens(member.net_connections(kind="inet"), port):
                    return False
            except psutil.AccessDenied:
                return False
    return listening(host, port)


def listening(host: str, port: int) -> bool:
    """Whether some socket on this machine listens on port, when host is this machine."""
    if not _local_host(host):
        return False
    try:
        return _listens(psutil.net_connections(kind="inet"), port)
    except psutil.AccessDenied:
        return False
