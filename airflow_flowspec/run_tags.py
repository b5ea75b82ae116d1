"""The rule every tag a run is given keeps, checked in one place for every way a tag comes in.

Tags come from ``python flow.py run --tag`` (checked before the run starts), the trigger form's
"Run tags" field or a trigger's conf (``{"flowspec_tags": [...]}``, checked by the start step before
anything is written) and ``Run.add_tag``/``replace_tags`` in the client: each calls
:func:`check_tags`, so a tag refused one way is refused every way.

Why no control characters: ``airflow-flowspec runs`` prints one run a line with tab-separated
columns, and tags are the namespaces the client filters by. A newline or a tab in a tag would print
a row or a column that is not there, an escape sequence would reach the terminal of whoever lists
the runs. Tags stored before this rule are shown escaped (:mod:`airflow_flowspec.terminal`) and can
still be removed.
"""

from __future__ import annotations

from airflow_flowspec.errors import TagError

MAX_TAG_CHARS = 512
#: The rule, as every refusal states it.
TAG_RULE = (
    f"a tag is a non-empty string of at most {MAX_TAG_CHARS} characters with no control characters "
    f"(no newline, tab, escape or other character that Python's repr shows escaped)"
)


def tag_problem(tag: object) -> str | None:
    """What breaks :data:`TAG_RULE` in ``tag`` ("is empty", ...), or None when it keeps it."""
    if not isinstance(tag, str):
        return f"is not a string but {type(tag).__name__}"
    if not tag:
        return "is empty"
    if len(tag) > MAX_TAG_CHARS:
        return f"has {len(tag)} characters"
    unprintable = next((character for character in tag if not character.isprintable()), None)
    if unprintable is not None:
        return f"contains the control character {unprintable!r}"
    return None


def check_tags(tags: object, *, whose: str) -> list[str]:
    """``tags`` as a list when every tag keeps :data:`TAG_RULE`, else a :class:`TagError` naming
    the first that does not; ``whose`` says whose tags they are ("run r1 of flow TrainFlow")."""
    if isinstance(tags, (str, bytes)) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise TagError(
            f"The tags of {whose} must be a list of strings, got {tags!r:.200}. The rule: {TAG_RULE}."
        )
    for tag in tags:
        problem = tag_problem(tag)
        if problem is not None:
            raise TagError(f"The tag {tag!r:.200} of {whose} is refused: it {problem}. The rule: {TAG_RULE}.")
    return list(tags)
