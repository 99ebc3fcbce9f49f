"""Which asyncio event loop runs the bridge: uvloop where it is installed, else the stdlib's.

Per Twilio frame most of a worker's CPU goes to the event loop and socket reads rather than
to the bridge's own code; uvloop (libuv, in C) makes that part cheaper, and the bridge's CPU
per call-second about 14 % lower (README, Performance). ``server.event_loop`` chooses:
``auto`` (the default) takes uvloop when it can be imported, ``uvloop`` insists on it,
``asyncio`` never uses it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop ``choice`` means on this machine: ``uvloop`` or ``asyncio``."""
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if resolve(choice) != "uvloop":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
