"""Why a connection to Temporal failed, in one plain line, for the CLI and the gateway alike."""

from __future__ import annotations

from workers.client import TemporalTarget

SERVER_HINT = "is the server running?"
"""What to check first when nothing answers at the address."""


def unreachable_message(target: TemporalTarget, err: BaseException, waited: float,
                        hint: str = SERVER_HINT) -> str:
    """Why the connection to Temporal failed, in plain words, from the SDK's error; `waited` is
    how long the caller waited for an answer, `hint` what to try when nothing answers.

    The SDK reports a refused connection, an unknown host or a port that is not Temporal's as
    one long Rust debug string; the operator needs to know which, and what to try."""
    text = str(err)
    where = f"cannot reach Temporal at {target.address}"
    if isinstance(err, TimeoutError):
        return f"{where}: no answer within {waited:g}s: {hint}"
    if isinstance(err, ValueError):
        return f"invalid Temporal address {target.address!r} ({text}): expected host:port"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return f"{where}: connection refused: {hint}"
    if "dns error" in text:
        host = target.address.rsplit(":", 1)[0]
        return f"{where}: unknown host {host!r}"
    if "get_system_info" in text:
        return (f"{where}: something answers there, but not as a Temporal frontend "
                "(wrong port, or TLS expected on one side only?)")
    if "InvalidContentType" in text or "InvalidMessage" in text:
        return (f"{where}: the TLS handshake failed: TLS is on (Temporal's env config, e.g. "
                "TEMPORAL_TLS) but the server does not seem to serve TLS")
    first = (text.strip().splitlines() or [type(err).__name__])[0]
    return f"{where}: {first}"
