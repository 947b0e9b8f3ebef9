"""A griffe extension that reads the reST left in docstrings as Markdown.

The optim core's docstrings still write Sphinx roles (`X`) and `::`
literal blocks; until they are converted to the Google/Markdown style the rest of flatlab uses,
the API pages show a role as inline code and a `::` block as a code block instead of raw markup.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"::[ \t]*$", re.MULTILINE)


def markdown_of(text: str) -> str:
    """`text` with Sphinx roles made inline code and `::` block openers made `:`."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return _LITERAL.sub(":", text)


class RestRoles(griffe.Extension):
    """Rewrites every loaded docstring with `markdown_of`."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
