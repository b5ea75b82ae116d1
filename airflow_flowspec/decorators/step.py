"""The ``@step`` marker.

It only tags the function: the graph reads the flow's source to learn its shape, and the runtime
decides how a step executes. Decorators stacked on a step (``@retry``, ``@catch`` ...) record
themselves in ``func.step_decorators`` so the translator and the runtime can read them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def step(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a FlowSpec method as a step of the flow."""
    func.is_step = True  # type: ignore[attr-defined]
    if not hasattr(func, "step_decorators"):
        func.step_decorators = []  # type: ignore[attr-defined]
    return func
