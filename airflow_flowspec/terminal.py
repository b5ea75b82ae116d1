"""Text read from a datastore, made safe to print on a terminal.

Whatever a step, a trigger or anyone who can write to the datastore stored (an artifact's repr or
type, a tag, a run id, a step or artifact name, a parameter value, an exception's text) may hold
control characters: an escape sequence clears or rewrites the terminal it is printed on, a carriage
return overwrites the line, a newline or a tab prints a row or a column that is not there. The
shell prints every such text through :func:`terminal_safe`, which shows each character Python's
``repr`` escapes the way ``repr`` escapes it (``\\x1b``, ``\\n``, ``\\u202e``) and leaves every
printable character (accented letters, CJK, emoji) as it is. Values written to files (``get -o``)
are never changed.
"""

from __future__ import annotations


def terminal_safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with every character that is not printable shown as ``repr`` shows it.

    ``multiline`` keeps newlines and tabs, for a value printed on lines of its own (a string
    ``get`` prints); any other control character, a carriage return included, is still escaped.
    """
    if text.isprintable():
        return text
    return "".join(
        character if character.isprintable() or (multiline and character in "\n\t") else repr(character)[1:-1]
        for character in text
    )
