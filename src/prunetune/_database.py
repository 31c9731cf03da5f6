"""Database URLs (SQLAlchemy's form, which the Optuna study and the MLflow store both take): whether
one parses, whether its driver imports, and an error's first line with the password masked.

Checked before any work: a malformed URL or a missing driver used to fail after the dense training,
the scores and the Ray start. SQLAlchemy is imported only inside the functions.
"""

from __future__ import annotations

import re

from prunetune._text import masked_url


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be opened before any connection is tried, and the fix, or None: it does not
    parse (``"it is not a database URL (...); correct the URL"``), or its dialect or driver does not
    import (``"no database driver for it (...); install the module it names"``)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - ArgumentError, ValueError (a port that is no number)
        return f"it is not a database URL ({type(exc).__name__}: {first_line(exc, url)}); correct the URL"
    try:
        dialect = parsed.get_dialect()
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()  # SQLAlchemy 2, 1.4
    except Exception as exc:  # noqa: BLE001 - NoSuchModuleError, ImportError
        return (f"no database driver for it ({type(exc).__name__}: {first_line(exc, url)}); install the module "
                "it names")
    return None


def first_line(exc: BaseException, url: str) -> str:
    """The first line of ``exc``'s message, cut to 160 characters, with the URL's password masked."""
    from sqlalchemy.engine import make_url

    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL has no password to hide
        password = None
    text = text.replace(url, masked_url(url))
    if password:  # as a whole token: a password "p" must not turn "pymysql" into "***ymysql"
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(str(password))}(?![A-Za-z0-9])", "***", text)
    return text[:160]
