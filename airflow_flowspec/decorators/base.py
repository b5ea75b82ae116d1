"""Machinery shared by step decorators: validation of their arguments and of where they sit.

A decorator only records its attributes on the step function (``func.step_decorators``); the
translator maps them to Airflow task settings and the runtime applies the ones that act inside a
task (``@catch``, ``@environment``). Usable bare (``@retry``) or called (``@retry(times=2)``), as in
Metaflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from airflow_flowspec.errors import DecoratorError


class StepDecorator:
    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **attributes: Any):
        unknown = sorted(set(attributes) - set(self.defaults))
        if unknown:
            raise DecoratorError(
                f"@{self.name} got unknown argument(s) {', '.join(unknown)}; "
                f"it accepts {', '.join(sorted(self.defaults)) or 'no arguments'}."
            )
        self.attributes = {**self.defaults, **attributes}
        self.validate()

    def validate(self) -> None:
        """Raise DecoratorError for invalid attribute values; override in subclasses."""

    def __getitem__(self, key: str) -> Any:
        return self.attributes[key]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.attributes.items()))
        return f"@{self.name}({args})"


def attach(func: Callable[..., Any], decorator: StepDecorator) -> Callable[..., Any]:
    if not getattr(func, "is_step", False):
        name = getattr(func, "__name__", repr(func))
        raise DecoratorError(
            f"@{decorator.name} on '{name}' must be placed above @step (step decorators wrap a step), "
            f"e.g.\n    @{decorator.name}\n    @step\n    def {name}(self): ..."
        )
    existing = func.step_decorators  # type: ignore[attr-defined]
    if any(d.name == decorator.name for d in existing):
        raise DecoratorError(f"Step '{func.__name__}' has @{decorator.name} twice; keep one.")
    existing.append(decorator)
    return func


def make_step_decorator(cls: type[StepDecorator]) -> Callable[..., Any]:
    def decorator(func: Callable[..., Any] | None = None, **attributes: Any) -> Any:
        if func is not None:
            return attach(func, cls())
        instance = cls(**attributes)
        return lambda f: attach(f, instance)

    decorator.__name__ = cls.name
    decorator.__doc__ = cls.__doc__
    return decorator


def step_decorators_of(func: Callable[..., Any]) -> dict[str, StepDecorator]:
    return {d.name: d for d in getattr(func, "step_decorators", [])}
