"""The user-facing ``FlowSpec`` base class (placeholder; the full class lands with the runtime)."""

from __future__ import annotations


class FlowSpec:
    """Base class of a flow: subclass it and mark methods with ``@step``."""

    def next(self, *steps, foreach=None, condition=None):  # noqa: A003
        raise NotImplementedError
