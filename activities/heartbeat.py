"""Heartbeat while awaiting one long call, so a slow but live side effect is not timed out; and
finish work that must not stop halfway even when the step is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")

HEARTBEAT_EVERY = 2.0
"""Seconds between heartbeats; well inside the workflow's 10 s heartbeat timeout."""


async def heartbeating(awaitable: Awaitable[T], detail: str) -> T:
    """Await `awaitable`, heartbeating `detail` every couple of seconds until it finishes.

    As a local activity there is nothing to heartbeat to (the workflow task that runs it is kept
    alive by the worker), so the call is simply awaited.
    """
    if activity.info().is_local:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)
            if done:
                return task.result()
            activity.heartbeat(detail)
    finally:
        if not task.done():
            task.cancel()


async def uninterrupted(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` to its end even when cancelled meanwhile, then re-raise the cancellation.

    For work that must not stop halfway: a signalled process group must be waited for, a
    service already stopped must be started again. An error of the work itself wins over the
    cancellation, since it says what state the work was left in.
    """
    task = asyncio.ensure_future(awaitable)
    interrupted: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError as err:
            if task.cancelled():
                raise
            interrupted = err
    if interrupted is not None:
        raise interrupted
    return result
