"""The 256 MB value of cases 1 and 2 and its timed round trip, as their child processes run them.

Both cases time ours and a raw baseline the same way (save, then load, with the RSS high-water mark
reset just before the save); only the store differs, so the measuring lives here once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import memory


def make_value(kind: str, size: int) -> Any:
    """A NumPy array of random floats, or random bytes, of ``size`` bytes."""
    if kind == "numpy":
        import numpy

        return numpy.random.default_rng().random(size // 8)
    return os.urandom(size)


def round_trip(value: Any, save: Callable[[], Any], load: Callable[[Any], Any]) -> dict[str, float]:
    """Seconds to ``save()`` and to ``load(what save returned)``; extra peak RSS during the save."""
    before = memory.reset_peak()
    start = time.perf_counter()
    saved = save()
    seconds_to_save = time.perf_counter() - start
    extra = memory.peak_bytes() - before
    start = time.perf_counter()
    back = load(saved)
    seconds_to_load = time.perf_counter() - start
    assert len(back) == len(value)
    return {"save": seconds_to_save, "load": seconds_to_load, "extra": extra}
