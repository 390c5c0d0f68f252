"""The console's languages: Simplified Chinese by default, English on request.

Templates and code write English message ids (``_("Datasets")``); the Chinese is in gettext
catalogues, ``locales/zh_CN/LC_MESSAGES/*.po`` (one per part of the console, merged at start),
compiled in memory with Babel, so no compiled file is committed beside its source. The
language is ``?lang=`` when a request names one (and it is remembered in a cookie), else the
cookie, else Chinese. Dates and numbers are formatted with Babel for the language.
"""

from __future__ import annotations

import gettext
import io
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_datetime, get_timezone
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import Translations
from starlette.requests import Request

LOCALES_DIR = Path(__file__).parent / "locales"
#: The languages offered, by the tag ``?lang=`` takes, with their gettext locale names.
LANGUAGES: Mapping[str, str] = {"zh-CN": "zh_CN", "en": "en"}
DEFAULT = "zh-CN"
LANG_COOKIE = "broker_console_lang"

_current: ContextVar[str] = ContextVar("console_language", default=DEFAULT)


@cache
def catalog(locale: str) -> Catalog:
    """Every ``.po`` file of ``locale`` merged into one catalogue."""
    merged = Catalog(locale=locale)
    for path in sorted((LOCALES_DIR / locale / "LC_MESSAGES").glob("*.po")):
        with path.open("rb") as fh:
            for message in read_po(fh, locale=locale):
                if message.id and message.string:
                    merged.add(message.id, message.string, context=message.context)
    return merged


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The compiled translations of ``language`` (English: the message ids themselves)."""
    locale = LANGUAGES[language]
    if locale == "en":
        return gettext.NullTranslations()
    buffer = io.BytesIO()
    write_mo(buffer, catalog(locale))
    buffer.seek(0)
    return Translations(buffer)


def choose(request: Request) -> tuple[str, bool]:
    """The request's language, and whether the request named it (to be remembered)."""
    asked = request.query_params.get("lang")
    if asked is not None and asked in LANGUAGES:
        return asked, True
    remembered = request.cookies.get(LANG_COOKIE)
    return (remembered if remembered is not None and remembered in LANGUAGES else DEFAULT), False


def activate(language: str) -> None:
    """Make ``language`` this request's (for :func:`gettext_` and the filters)."""
    _current.set(language)


def current() -> str:
    """This request's language tag."""
    return _current.get()


def gettext_(message: str, **variables: Any) -> str:
    """``message`` in this request's language, with ``%(name)s`` variables filled in."""
    text = translations(_current.get()).gettext(message)
    return text % variables if variables else text


def ngettext_(singular: str, plural: str, n: int, **variables: Any) -> str:
    """The singular or plural of a message in this request's language."""
    text = translations(_current.get()).ngettext(singular, plural, n)
    return text % {"num": n, **variables}


_ = gettext_


def babel_locale() -> Locale:
    """Babel's locale for this request's language."""
    return Locale.parse(LANGUAGES[_current.get()])


def number(value: object, digits: int | None = None) -> str:
    """A number formatted for the language (grouping, decimal sign); other values as text."""
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(
            value, "as_integer_ratio")):
        return "" if value is None else str(value)
    fmt = None if digits is None else "#,##0." + "0" * digits if digits else "#,##0"
    return format_decimal(value, format=fmt, locale=babel_locale())  # type: ignore[arg-type]


def when(value: datetime | str | None) -> str:
    """A timestamp formatted for the language (UTC, to the second)."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    return format_datetime(value, "yyyy-MM-dd HH:mm:ss 'UTC'", tzinfo=get_timezone("UTC"),
                           locale=babel_locale())
