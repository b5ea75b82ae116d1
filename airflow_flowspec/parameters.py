"""Flow parameters: values given per run, stored as artifacts by the start step.

A ``Parameter`` is a descriptor on the flow class. At parse time the translator turns each one into
a typed Airflow ``Param`` (so the trigger form is typed); at run time the start step converts the
given value with ``Parameter.convert`` and saves it, and every later step reads it like any other
artifact. Reading ``self.alpha`` outside a run returns the Parameter itself, as in Metaflow.
"""

from __future__ import annotations

import getpass
import inspect
import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

from airflow_flowspec.errors import ParameterError


class JSONTypeClass:
    """Marker type: the parameter's value is JSON (a dict, list, number, string, bool or null)."""

    name = "JSON"

    def __repr__(self) -> str:
        return "JSONType"


JSONType = JSONTypeClass()

_SUPPORTED_TYPES = (str, int, float, bool)
#: The rule a float parameter's value keeps wherever it comes from (command line, trigger, default).
FINITE_RULE = (
    "a float parameter takes finite numbers only; nan, inf and numbers too large for a float (1e400 "
    "reads as inf) are refused, because Airflow would hand them to the run as null and the run would "
    "quietly use the default"
)
#: The largest finite float, the bound the trigger form's schema checks (see the translator).
LARGEST_FLOAT = 1.7976931348623157e308
#: The key of a run's conf (``run --tag``, or ``{"flowspec_tags": [...]}`` when triggering) holding
#: its tags, and so the name of the trigger form's "Run tags" field: no flow Parameter may take it.
RUN_TAGS_CONF_KEY = "flowspec_tags"


def _of_flow(flow_name: str) -> str:
    return f" of flow {flow_name}" if flow_name else ""


def _parse_json(text: str) -> Any:
    """JSON as RFC 8259 has it: ``NaN``, ``Infinity`` and numbers beyond a float (``1e400``), which
    Python's parser accepts and Airflow would hand to the run as null, are refused."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON number (JSON numbers are finite)")

    def finite(number: str) -> float:
        parsed = float(number)
        if not math.isfinite(parsed):
            refuse(number)
        return parsed

    return json.loads(text, parse_constant=refuse, parse_float=finite)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


class ParameterContext(NamedTuple):
    """What Metaflow hands a callable default (``default=lambda ctx: ctx.user_name``): its names."""

    flow_name: str
    user_name: str
    parameter_name: str
    logger: Callable[..., None]
    ds_type: str
    configs: Any = None


class Parameter:
    """A value chosen when a run starts: ``alpha = Parameter("alpha", default=0.5, type=float)``.

    ``type`` is inferred from ``default`` when not given (as Metaflow does): str, int, float, bool,
    or ``JSONType`` for dicts and lists. ``required=True`` without a default means every run must
    give a value. ``separator=","`` (a ``str`` parameter) makes the value a list of its parts, as in
    Metaflow. A callable default takes no argument, or Metaflow's :class:`ParameterContext`.
    ``secret=True`` (a token, a password) keeps the value out of everything this
    package writes for people to read: manifests, the XCom view, run records and the task log
    show ``<secret>``, and its default, if callable (``default=lambda: os.environ["TOKEN"]``), is
    evaluated when the run starts, never at DAG parse.
    """

    is_include_file = False

    def __init__(
        self,
        name: str,
        default: Any = None,
        type: Any = None,  # noqa: A002 - Metaflow's keyword
        help: str | None = None,  # noqa: A002 - Metaflow's keyword
        required: bool = False,
        secret: bool = False,
        separator: str | None = None,
        **_ignored: Any,
    ):
        if not isinstance(name, str) or not name:
            raise ParameterError(f"A Parameter needs a non-empty string name, got {name!r}.")
        self.name = name
        self.default = default
        self.help = help or ""
        self.required = bool(required)
        self.secret = bool(secret)
        self.attr_name: str = name.replace("-", "_")
        self.type = self._resolve_type(type, default)
        self.separator = separator
        if separator and self.type is not str:
            raise ParameterError(
                f"Parameter '{name}' has separator={separator!r}, which splits text: a separator is "
                f"only allowed for str parameters (this one is {self.type_name})."
            )

    def _resolve_type(self, declared: Any, default: Any) -> Any:
        if declared is not None:
            if declared is JSONType or declared in _SUPPORTED_TYPES:
                return declared
            raise ParameterError(
                f"Parameter '{self.name}' has type {declared!r}; supported types are str, int, float, "
                f"bool and JSONType."
            )
        if default is None or callable(default):
            return str
        if isinstance(default, bool):
            return bool
        if isinstance(default, (dict, list)):
            return JSONType
        for candidate in (int, float, str):
            if isinstance(default, candidate):
                return candidate
        raise ParameterError(
            f"Parameter '{self.name}' has a default of type {type(default).__name__}; give type= "
            f"(str, int, float, bool or JSONType) explicitly."
        )

    def __set_name__(self, owner: type, attr_name: str) -> None:
        self.attr_name = attr_name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        if self.attr_name in instance.__dict__:
            return instance.__dict__[self.attr_name]
        task = instance._flowspec_task_state()  # in a later step, the parameter is an artifact
        if task is not None and self.attr_name in task.artifacts:
            return task.artifacts.load(self.attr_name)
        return self

    def __set__(self, instance: Any, value: Any) -> None:
        raise ParameterError(
            f"Cannot assign to parameter '{self.name}' inside a step: parameters are read-only. "
            f"Store a derived value under another name, e.g. self.{self.attr_name}_used = ..."
        )

    @property
    def type_name(self) -> str:
        return "JSON" if self.type is JSONType else self.type.__name__

    def convert(self, value: Any, flow_name: str = "") -> Any:
        """Turn a value from the command line (text) or the Airflow trigger form (JSON) into the type."""
        if value is None:
            return None
        try:
            if self.type is JSONType:
                return _parse_json(value) if isinstance(value, str) else value
            if self.type is bool:
                return value if isinstance(value, bool) else _parse_bool(str(value))
            if self.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{value!r} is not a whole number")
            if self.type is int and isinstance(value, bool):
                raise ValueError(f"{value!r} is a boolean")
            converted = self.type(value)
        except (ValueError, TypeError) as err:
            raise ParameterError(
                f"Parameter '{self.name}'{_of_flow(flow_name)} expects a value of type {self.type_name}, "
                f"got {value!r}: {err}."
            ) from None
        if self.type is float and not math.isfinite(converted):
            self.refuse_non_finite(value, flow_name)
        return converted

    def refuse_non_finite(self, value: Any, flow_name: str, *, given_as: str = "was given") -> NoReturn:
        """Raise the :data:`FINITE_RULE` error for ``value`` (``given_as``: "has the default")."""
        number = repr(float(value))
        reads_as = "" if number == str(value).strip().lower() else f" (it reads as {number})"
        raise ParameterError(
            f"Parameter '{self.name}'{_of_flow(flow_name)} {given_as} {value!r}{reads_as}, which is not a "
            f"finite number. The rule: {FINITE_RULE}."
        )

    def default_value(self, flow_name: str = "") -> Any:
        if not callable(self.default):
            return self.default
        if not _takes_an_argument(self.default):
            return self.default()
        from airflow_flowspec import config

        context = ParameterContext(
            flow_name=flow_name,
            user_name=getpass.getuser(),
            parameter_name=self.name,
            logger=print,
            ds_type="s3" if config.datastore_root().startswith("s3://") else "local",
        )
        return self.default(context)

    def as_artifact(self, value: Any) -> Any:
        """The converted value as the steps see it: split by ``separator``, if given."""
        if self.separator and isinstance(value, str) and value:
            return value.split(self.separator)
        return value

    def __repr__(self) -> str:
        default = "<secret>" if self.secret else repr(self.default)
        return f"Parameter({self.name!r}, default={default}, type={self.type_name})"


def _takes_an_argument(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters)


class IncludeFile(Parameter):
    """A parameter whose value is a file's path; the start step stores the file's CONTENT.

    The content is read once when the run starts, so every step, every retry and every later
    lookup sees the same bytes even if the file changes afterwards.
    """

    is_include_file = True

    def __init__(
        self,
        name: str,
        default: str | None = None,
        help: str | None = None,  # noqa: A002
        is_text: bool = True,
        encoding: str = "utf-8",
        required: bool = False,
        secret: bool = False,
        separator: str | None = None,
        **_ignored: Any,
    ):
        super().__init__(name, default=default, type=str, help=help, required=required, secret=secret)
        self.is_text = is_text
        self.encoding = encoding

    def read(self, path: str, flow_name: str = "") -> str | bytes:
        try:
            with open(path, "rb") as handle:
                content = handle.read()
        except OSError as err:
            raise ParameterError(
                f"IncludeFile '{self.name}' of flow {flow_name} could not read {path!r}: "
                f"{err.strerror or err}. Give an existing file with --{self.name} PATH."
            ) from None
        if not self.is_text:
            return content
        try:
            return content.decode(self.encoding)
        except UnicodeDecodeError as err:
            raise ParameterError(
                f"IncludeFile '{self.name}' of flow {flow_name}: {path!r} is not {self.encoding} text "
                f"({err.reason} at byte {err.start}). Pass is_text=False to store raw bytes."
            ) from None


def flow_parameters(flow_class: type) -> list[Parameter]:
    """The flow's parameters in a stable order (alphabetical by attribute name, like Metaflow's CLI)."""
    found: dict[str, Parameter] = {}
    for klass in reversed(flow_class.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, Parameter):
                found[attr] = value
    return [found[attr] for attr in sorted(found)]
