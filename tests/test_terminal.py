"""Stored text made safe for a terminal: control characters shown as repr shows them, printable
Unicode left readable."""

from __future__ import annotations

import pytest

from airflow_flowspec.terminal import terminal_safe


@pytest.mark.parametrize(
    "stored, shown",
    [
        ("\x1b[2J\x1b[31mPWNED\x1b[0m", "\\x1b[2J\\x1b[31mPWNED\\x1b[0m"),  # clear screen, colours
        ("ok\rFAKE", "ok\\rFAKE"),  # a carriage return would overwrite the line
        ("row\nfake-run\tsucceeded", "row\\nfake-run\\tsucceeded"),  # a row and columns that are not there
        ("\x07\x08\x7f\x9b", "\\x07\\x08\\x7f\\x9b"),  # bell, backspace, DEL, the 8-bit CSI
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override: the text would read backwards
        ("café 日本語 ✓ 🚀 'quoted' back\\slash", "café 日本語 ✓ 🚀 'quoted' back\\slash"),
    ],
)
def test_control_characters_are_escaped_as_repr_escapes_them(stored, shown):
    """Guards terminal_safe: what the shell prints from the datastore has no raw control character,
    and printable Unicode stays readable."""
    assert terminal_safe(stored) == shown
    assert terminal_safe(stored).isprintable()


def test_a_multiline_value_keeps_its_lines_and_tabs_but_not_other_control_characters():
    """Guards terminal_safe(multiline=True), what `get` prints a string value with."""
    assert terminal_safe("a\tb\nc\rd\x1b[2J", multiline=True) == "a\tb\nc\\rd\\x1b[2J"
