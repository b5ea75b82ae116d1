"""The tag rule, shared by `run --tag`, the start step (trigger form and conf) and Run.add_tag."""

from __future__ import annotations

import pytest

from airflow_flowspec.errors import ParameterError, TagError
from airflow_flowspec.run_tags import TAG_RULE, check_tags


@pytest.mark.parametrize(
    "tag, problem",
    [
        ("", "it is empty"),
        ("x" * 513, "it has 513 characters"),
        (None, "it is not a string but NoneType"),
        ("exp\nfake-run", "it contains the control character '\\n'"),
        ("a\tb", "it contains the control character '\\t'"),
        ("\x1b[2J", "it contains the control character '\\x1b'"),
        ("ok\r", "it contains the control character '\\r'"),
        ("a\u202eb", "it contains the control character '\\u202e'"),
    ],
)
def test_a_tag_breaking_the_rule_is_refused_naming_it_and_the_rule(tag, problem):
    """Guards run_tags.tag_problem: each way a tag can break the rule is refused with the tag (shown
    escaped), what is wrong with it and the rule."""
    with pytest.raises(TagError) as refused:
        check_tags(["fine", tag], whose="run r1 of flow TrainFlow")
    message = str(refused.value)
    assert (
        message
        == f"The tag {tag!r:.200} of run r1 of flow TrainFlow is refused: {problem}. The rule: {TAG_RULE}."
    )
    assert message.isprintable()  # the refusal itself prints nothing raw
    assert isinstance(refused.value, ParameterError) and isinstance(refused.value, ValueError)


def test_tags_must_come_as_a_list_and_printable_unicode_is_a_tag():
    """Guards check_tags's shape check: one string is not a list of tags (its characters would be)."""
    with pytest.raises(TagError, match="The tags of run r1 must be a list of strings, got 'exp1'"):
        check_tags("exp1", whose="run r1")
    assert check_tags(("exp1", "café-実験-✓", "x" * 512), whose="run r1") == [
        "exp1",
        "café-実験-✓",
        "x" * 512,
    ]
