"""What the programs medkit starts may see of the worker's environment, and what their output may say.

The worker holds secrets in its environment (bearer tokens, webhook URLs, SMTP passwords,
routing keys: everything a policy's `*_env` fields name). A child that inherited all of it
would expose them twice over: a restarted service could read them from /proc/PID/environ for
as long as it runs, and a `command` action that prints its environment (`env`, a verbose
script, a crash dump) would put them into its result, which lands in the workflow history,
`medkit status`, notifications and logs. So every child gets `child_environment(...)`
instead of `os.environ`, and every piece of child output an activity returns passes through
`redact(...)` first.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping

from temporalio.exceptions import ApplicationError

from models.probes import SECRET_NAME

ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "PYTHONPATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
})
"""Worker variables every child gets, because ordinary programs misbehave without them and none
of them is a secret:

- PATH: find programs by name (`argv: [systemctl, ...]`, a script calling `curl`);
- HOME, USER, LOGNAME, SHELL: who the process runs as; many tools read their config from HOME;
- LANG, LANGUAGE, LC_* (see `ALLOWED_PREFIXES`), TZ: text encoding, messages and local time,
  so a child decodes its arguments and prints dates as it would from a shell;
- TMPDIR: where temporary files go (a worker may point it at a private directory);
- TERM: some tools refuse to run, or print escape codes, without it;
- PYTHONPATH, VIRTUAL_ENV: a Python service started with the worker's interpreter
  (`python -m demo.service`, the demo) finds the same packages the worker does;
- PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE: how the deployment runs Python (container images
  set them so logs are written as they happen); a restarted Python service keeps behaving so.

Deliberately left out: proxy variables (`HTTP_PROXY=http://user:pass@...` carries
credentials), `KUBECONFIG`, cloud and database variables, and everything the worker's own
secrets live in. A child that needs one gets it by name through its spec's `inherit_env`.
"""

ALLOWED_PREFIXES = ("LC_",)
"""Prefixes of allowed names: the locale categories (LC_ALL, LC_CTYPE, ...)."""

MIN_SECRET_LENGTH = 6
"""Shorter values are not redacted: replacing `1` or `yes` everywhere would mangle the output
and a secret that short protects nothing anyway."""

REDACTED = "[redacted]"
"""What a secret value is replaced with in recorded output."""


UNRUNNABLE = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOEXEC,
                        errno.ELOOP, errno.ENAMETOOLONG})
"""Why a program cannot be started that no retry changes: it or its cwd does not exist, may
not be executed, or is no program the kernel can run (ENOEXEC: a script without `#!`).
Others (EAGAIN, ENOMEM: out of processes or memory) may pass."""


def unrunnable(err: OSError) -> bool:
    """Whether starting a program failed for good (see `UNRUNNABLE`)."""
    return err.errno in UNRUNNABLE


def allowed(name: str) -> bool:
    """Whether a worker variable is passed to every child without being asked for."""
    return name in ALLOWED or name.startswith(ALLOWED_PREFIXES)


def child_environment(extra: Mapping[str, str], inherit: Iterable[str] = (),
                      environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child medkit starts: the allowlist, the named worker variables, `extra`.

    `inherit` names worker variables the policy passes on purpose (a spec's `inherit_env`); a
    name that is not set on the worker is a non-retryable `MissingEnv` error, since the child
    would otherwise start without something the operator said it needs. `extra` (a spec's
    own `env`) wins over both. `environ` defaults to the worker's environment.
    """
    source = os.environ if environ is None else environ
    env = {name: value for name, value in source.items() if allowed(name)}
    for name in inherit:
        if name not in source:
            raise ApplicationError(
                f"inherit_env names {name}, which is not set on this worker",
                type="MissingEnv", non_retryable=True,
            )
        env[name] = source[name]
    env.update(extra)
    return env


def secret_values(named: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> set[str]:
    """The values to keep out of recorded output.

    Those of worker variables whose names look secret (`SECRET_NAME`) plus those of the
    variables in `named` (the `*_env` fields of the spec at hand, e.g. its `inherit_env`),
    each at least `MIN_SECRET_LENGTH` long. Read at each call, so a variable set after the
    worker started counts too.
    """
    source = os.environ if environ is None else environ
    names = {name for name in source if SECRET_NAME.search(name)} | set(named)
    return {value for name in names
            if len(value := source.get(name, "")) >= MIN_SECRET_LENGTH}


def redact_values(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of every secret in `secrets` replaced by one `[redacted]`.

    Every place any secret occurs is found in the original text first, and each stretch they
    cover (secrets that contain, overlap or adjoin one another included) becomes a single
    marker: replacing secret by secret instead leaves pieces behind (a shorter secret inside a
    longer one, replaced first, splits the longer one so it is no longer found), and lets a
    later secret match inside an earlier marker. So the result depends only on the set of
    secret values, not on where they came from or in which order they are given.
    """
    values = {value for value in secrets if value}
    if not values or not text:
        return text
    covered = bytearray(len(text))
    for value in values:
        start = text.find(value)
        while start != -1:
            covered[start:start + len(value)] = b"\x01" * len(value)
            start = text.find(value, start + 1)
    parts: list[str] = []
    position = 0
    while (start := covered.find(1, position)) != -1:
        parts += [text[position:start], REDACTED]
        position = covered.find(0, start)
        if position == -1:
            return "".join(parts)
    parts.append(text[position:])
    return "".join(parts)


def redact(text: str, named: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> str:
    """`text` with every secret value (see `secret_values`) replaced by `[redacted]`.

    Secrets that contain or overlap one another are hidden whole (see `redact_values`). Only
    the literal value is found: a program that prints a secret encoded (base64, URL-quoted,
    split across lines) defeats this, which is why children do not get the secrets in the
    first place.
    """
    return redact_values(text, secret_values(named, environ))
