"""Checks that finished work is freed by reference counting, shared by the memory tests.

A reference cycle among the objects of one call (a transaction and its owner, a socket protocol and its
transport) leaves the call as cyclic garbage that only a full collection frees; under load those run minutes
apart, so memory climbs and each collection stalls the loop. The tests run their rounds with the collector
off (`collector_off`) and then ask for `cyclic_garbage()` to be empty.
"""
from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_off() -> Iterator[None]:
    """Collect once, then keep the cyclic GC off until the block ends (nothing is freed behind the test's back)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cyclic_garbage() -> Counter:
    """Objects that only the cyclic GC would free, by type (empty when reference counting freed everything)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    found = Counter(type(o).__name__ for o in gc.garbage)
    gc.garbage.clear()
    return found


def live(*types: type) -> int:
    """How many objects of these (GC-tracked) types are alive."""
    return sum(1 for o in gc.get_objects() if isinstance(o, types))
