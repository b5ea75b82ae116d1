"""Parameter values as the command line and the start step convert them: non-finite numbers for a
float parameter are refused with the rule, since Airflow would turn them into null on the way to the
run (see tests/airflow/test_translator.py for the trigger form)."""

from __future__ import annotations

import math

import pytest

from airflow_flowspec.errors import ParameterError
from airflow_flowspec.parameters import FINITE_RULE, JSONType, Parameter

RATIO = Parameter("ratio", default=0.5, type=float)


@pytest.mark.parametrize(
    "given, shown",
    [
        ("nan", "'nan'"),
        ("NaN", "'NaN'"),
        ("inf", "'inf'"),
        ("-inf", "'-inf'"),
        ("Infinity", "'Infinity' (it reads as inf)"),
        ("1e400", "'1e400' (it reads as inf)"),
        ("-1e999", "'-1e999' (it reads as -inf)"),
        (math.nan, "nan"),
        (math.inf, "inf"),
    ],
)
def test_a_float_parameter_refuses_a_number_that_is_not_finite(given, shown):
    """Guards the finite check in Parameter.convert, which the command line and the start step use:
    one paragraph naming the flow, the parameter, the value and the rule."""
    with pytest.raises(ParameterError) as refused:
        RATIO.convert(given, "RatioFlow")
    assert str(refused.value) == (
        f"Parameter 'ratio' of flow RatioFlow was given {shown}, which is not a finite number. "
        f"The rule: {FINITE_RULE}."
    )


@pytest.mark.parametrize("given, value", [("0.25", 0.25), (3, 3.0), ("-1e308", -1e308), ("0", 0.0)])
def test_finite_numbers_still_convert(given, value):
    assert RATIO.convert(given, "RatioFlow") == value


@pytest.mark.parametrize("given", ['{"lr": NaN}', "[1e400]", '{"lr": -Infinity}'])
def test_a_json_parameter_refuses_what_json_has_no_number_for(given):
    """Guards the JSON parser of Parameter.convert: NaN, Infinity and 1e400 are not JSON numbers
    (Python's json module accepts them); inside a JSON value Airflow would turn them into null too."""
    config = Parameter("config", default={}, type=JSONType)
    refusal = r"Parameter 'config' of flow F expects a value of type JSON, got .* is not a JSON number"
    with pytest.raises(ParameterError, match=refusal):
        config.convert(given, "F")
    assert config.convert('{"lr": 1.5e-3, "n": [1, 2]}', "F") == {"lr": 1.5e-3, "n": [1, 2]}
