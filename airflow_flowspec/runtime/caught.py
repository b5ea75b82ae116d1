"""The value ``@catch(var=...)`` stores when a step fails for good: picklable and readable anywhere."""

from __future__ import annotations

import traceback


class CaughtException:
    """A failed step's exception, kept as text so it unpickles without the failing code's classes."""

    def __init__(self, exc: BaseException):
        self.type = f"{type(exc).__module__}.{type(exc).__qualname__}"
        self.exception = str(exc)
        self.stacktrace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def __repr__(self) -> str:
        return f"CaughtException({self.type}: {self.exception})"

    __str__ = __repr__
