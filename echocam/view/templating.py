"""The one Jinja2 environment that renders the viewer's pages and ``report.html``.

Autoescaping is on for every template: a value reaches the HTML only through ``{{ }}``, which
escapes it (text and attribute values alike), ``|urlencode`` (URLs) or ``|tojson`` (the recording
page's data block), so a recording key or a class name cannot become markup.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined


def fmt(value: Any, spec: str) -> str:
    """``format(value, spec)``, and nothing for a missing value (``{{ p|fmt(".3f") }}``)."""
    return "" if value is None else format(value, spec)


def _blank(value: Any) -> Any:
    """What ``{{ value }}`` prints: a missing value (None) prints as nothing, not "None"."""
    return "" if value is None else value


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("echocam.view", "templates"),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt name fails the page instead of printing nothing
        finalize=_blank,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    return env


def render(name: str, **context: Any) -> str:
    """Template ``name`` (under ``echocam/view/templates/``) rendered with ``context``."""
    return environment().get_template(name).render(**context)
