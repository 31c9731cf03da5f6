"""How a message names what the user gives: a command's flags or the Python API's keyword arguments.

The tracking code serves ``prunetune pareto``/``export`` and :func:`prunetune.pareto`/:func:`prunetune.export`
alike; its errors end with the fix, and the fix must name what the caller can type. Functions take a
``spelling`` argument (default :data:`FLAGS`); the API passes :data:`KEYWORDS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spelling:
    """``keywords=False``: ``--tracking-uri``, ``--tracking-uri URI``, ``--overwrite``;
    ``keywords=True``: ``tracking_uri``, ``tracking_uri='URI'``, ``overwrite=True``."""

    keywords: bool = False

    def name(self, key: str) -> str:
        """The option itself: ``--search-run`` or ``search_run``."""
        return key if self.keywords else "--" + key.replace("_", "-")

    def given(self, key: str, value: object) -> str:
        """The option with a value: ``--tracking-uri sqlite:///m.db`` or ``tracking_uri='sqlite:///m.db'``
        (the value as Python writes it: ``budget=0.3``)."""
        return f"{key}={value!r}" if self.keywords else f"{self.name(key)} {value}"

    def switch(self, key: str) -> str:
        """An on/off option turned on: ``--overwrite`` or ``overwrite=True``."""
        return f"{key}=True" if self.keywords else self.name(key)


FLAGS = Spelling()
KEYWORDS = Spelling(keywords=True)
