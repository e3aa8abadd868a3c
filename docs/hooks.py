"""mkdocs hook: docstrings use Sphinx roles (``:func:`scan```), which Markdown renders as ``:func:<code>scan</code>``.

Keep the code span, drop the role, so the API page reads like the rest of the site.
"""
from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|meth|attr|mod|exc|data|obj):(<code>)")


def on_page_content(html: str, **_kwargs) -> str:
    return ROLE.sub(r"\1", html)
