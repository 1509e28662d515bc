"""What the phone harnesses share: waiting for something in a phone's output while its process may die."""
from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any


def wait_for_output(cond: threading.Condition, find: Callable[[], Any], timeout: float, what: str,
                    proc: subprocess.Popen[Any] | None, fail: Callable[[str], Exception]) -> Any:
    """``find()`` under ``cond`` until it returns something (returned), the process exits, or ``timeout``
    passes; the last two raise ``fail(reason)``. The output readers notify ``cond`` on every new line."""
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            found = find()
            if found is not None:
                return found
            if proc is not None and proc.poll() is not None:
                raise fail(f"exited ({proc.returncode}) before {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise fail(f"no {what} within {timeout:g}s")
            cond.wait(min(remaining, 0.2))
