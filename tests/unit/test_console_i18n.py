"""The console's messages: every one the templates and the code use has a Chinese
translation, and the catalogues hold nothing the console no longer says."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir

from broker.console import i18n

CONSOLE = Path(i18n.__file__).parent
METHODS = [("**/templates/**.html", "jinja2.ext:babel_extract"), ("**.py", "python")]
OPTIONS = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "false"}}


def used() -> set[str]:
    """The message ids the console's templates and modules use."""
    found: set[str] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            CONSOLE, METHODS, options_map=OPTIONS, keywords={"_": None, "gettext": None,
                                                             "ngettext": (1, 2),
                                                             "gettext_": None}):
        found.update([message] if isinstance(message, str) else [m for m in message if m])
    return found


def test_every_message_the_console_uses_has_a_chinese_translation() -> None:
    catalog = i18n.catalog("zh_CN")
    missing = sorted(m for m in used() if not getattr(catalog.get(m), "string", None))
    assert missing == [], f"add these to a .po file under {CONSOLE / 'locales/zh_CN'}: {missing}"


def test_the_catalogues_hold_no_message_the_console_no_longer_uses() -> None:
    stale = sorted(m.id for m in i18n.catalog("zh_CN") if m.id and m.id not in used())
    assert stale == []


def test_messages_are_translated_once() -> None:
    seen: dict[str, str] = {}
    twice = []
    from babel.messages.pofile import read_po
    for path in sorted((CONSOLE / "locales/zh_CN/LC_MESSAGES").glob("*.po")):
        with path.open("rb") as fh:
            for message in read_po(fh):
                if message.id:
                    if message.id in seen:
                        twice.append((message.id, seen[message.id], path.name))
                    seen[str(message.id)] = path.name
    assert twice == []


def test_chinese_is_the_default_and_english_is_the_message_ids() -> None:
    i18n.activate("zh-CN")
    assert i18n.gettext_("Log in") == "登录"
    i18n.activate("en")
    assert i18n.gettext_("Log in") == "Log in"
    assert i18n.DEFAULT == "zh-CN"
