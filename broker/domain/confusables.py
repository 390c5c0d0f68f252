"""Names that look alike: Unicode TS #39 confusable skeletons and mixed scripts.

A field ``town`` spelled with a Cyrillic o (U+043E) beside ``town`` looks like one field
twice: a contract, a query or a reader of the catalogue can be led to the wrong one. UTS #39
section 4 defines the *skeleton* of a string, ``NFD(map(NFD(s)))`` where ``map`` replaces each
character by the prototype of its confusable class (``confusables.txt``); two strings are
confusable exactly when their skeletons are equal. Names whose skeletons collide within one
scope (the fields of a dataset, one organisation's datasets, the registered organisations) are
refused.

The confusable classes come from the ``confusable_homoglyphs`` package, which ships Unicode's
``confusables.txt`` as data (for each character the others of its class). Only the equality
of skeletons matters here, so each class is represented by one fixed member: a string of
several characters when the class has one (in ``confusables.txt`` only prototypes are longer
than one character: ``ǆ`` -> ``dž``), else its ASCII member, else its lowest code point.

A name mixing scripts is refused too, at UTS #39's "highly restrictive" level (section 5.2):
one script, or Latin with Han and Japanese kana, with Han and Bopomofo, or with Han and
Hangul (``GDP增速`` is fine, ``town`` with a Cyrillic o is not). Common and inherited
characters (digits, ``_``, combining marks) belong to every script.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from functools import cache

from confusable_homoglyphs import categories, confusables

from broker.domain.errors import InvalidInput

#: Scripts that belong to every script: digits, punctuation, combining marks.
_ANY_SCRIPT = frozenset({"COMMON", "INHERITED"})
#: Script sets a name may draw on (UTS #39 5.2, "highly restrictive").
_ALLOWED_SETS = (frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
                 frozenset({"LATIN", "HAN", "BOPOMOFO"}),
                 frozenset({"LATIN", "HAN", "HANGUL"}))
#: The package wraps right-to-left characters in these marks for display.
_LRM = "\u200e"


def _bare(text: str) -> str:
    return text.strip(_LRM) if len(text) > 1 else text


@cache
def _prototypes() -> dict[str, str]:
    """Each character of a confusable class -> the member that stands for its class."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for key, glyphs in confusables.confusables_data.items():
        for glyph in glyphs:
            a, b = root(_bare(key)), root(_bare(glyph["c"]))
            if a != b:
                parent[a] = b
    classes: dict[str, list[str]] = {}
    for member in parent:
        classes.setdefault(root(member), []).append(member)
    standing = {key: min(members, key=lambda m: (len(m) == 1, not m.isascii(), m))
                for key, members in classes.items()}
    single = {m: standing[root(m)] for m in parent if len(m) == 1 and len(standing[root(m)]) == 1}
    mapping = {m: s for m, s in single.items() if m != s}
    # A standing member of several characters is written with the single ones' standings, so
    # that it is mapped as any name holding those characters would be.
    for m in parent:
        target = standing[root(m)]
        if len(m) == 1 and len(target) > 1:
            mapping[m] = "".join(single.get(c, c) for c in unicodedata.normalize("NFD", target))
    return mapping


def skeleton(name: str) -> str:
    """The UTS #39 skeleton of ``name``: equal for two names exactly when they are
    confusable (``town`` and ``town`` with a Cyrillic o, U+043E, have the same one)."""
    prototypes = _prototypes()
    mapped = "".join(prototypes.get(c, c) for c in unicodedata.normalize("NFD", name))
    return unicodedata.normalize("NFD", mapped)


def is_mixed_script(name: str) -> bool:
    """Whether ``name`` mixes scripts beyond UTS #39's "highly restrictive" level."""
    scripts = categories.unique_aliases(name) - _ANY_SCRIPT
    return len(scripts) > 1 and not any(scripts <= allowed for allowed in _ALLOWED_SETS)


#: Letters that render as nothing (UTS #31 default-ignorable, though Unicode calls them Lo).
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u034f\u17b4\u17b5")
#: Categories of characters that do not show: controls, formats (zero-width, bidi overrides,
#: tags), private use, unassigned, line and paragraph separators.
_UNSEEN = frozenset({"Cc", "Cf", "Co", "Cn", "Zl", "Zp"})


def _invisible(c: str) -> bool:
    code = ord(c)
    return (c in _FILLERS or unicodedata.category(c) in _UNSEEN
            or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF  # variation selectors
            or 0x180B <= code <= 0x180F)


def looks(name: str, key: Callable[[str], str] = str) -> frozenset[str]:
    """What ``name`` looks like: the skeletons of it, of its ``key`` (a case fold, say) and of
    the ``key`` of its skeleton. Two names look alike when these sets meet: ``TAXI`` and its
    Greek capitals by their own skeletons (a fold would make the Greek small letters, which do
    not look like ``taxi``), ``Town`` and ``town`` by their folds, ``TOWN`` and ``town`` with a
    Cyrillic o by one's fold and the other's skeleton."""
    own = skeleton(name)
    return frozenset({own, skeleton(key(name)), skeleton(key(own))})


def confusable_with(name: str, others: Iterable[str], key: Callable[[str], str] = str
                    ) -> list[str]:
    """The names of ``others`` that are ``name`` or look like it."""
    mine = looks(name, key)
    return sorted({o for o in others if o == name or looks(o, key) & mine})


def confusable_groups_by(names: Iterable[str], key: Callable[[str], str] = str
                         ) -> list[list[str]]:
    """The groups of two or more distinct ``names`` that look alike (``looks``), each
    sorted: names joined through any shared look are one group."""
    parent: dict[str, str] = {}

    def root(n: str) -> str:
        while parent.setdefault(n, n) != n:
            n = parent[n]
        return n

    first_with: dict[str, str] = {}
    for name in sorted(set(names)):
        for look in looks(name, key):
            a, b = root(first_with.setdefault(look, name)), root(name)
            if a != b:
                parent[b] = a
    groups: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        groups.setdefault(root(name), []).append(name)
    return sorted(g for g in groups.values() if len(g) > 1)


def _check_visible(names: Iterable[str], what: str, member: str = "names") -> None:
    """Refuse names holding characters that do not show, or spaces at either end or two in a
    row: two names that differ only there look the same."""
    hidden = sorted(n for n in names if any(_invisible(c) for c in n))
    if hidden:
        raise InvalidInput(
            f"{what} names may not hold invisible characters (zero-width, direction or "
            f"filler characters): {', '.join(ascii(n) for n in hidden)}.",
            **{member: hidden}, reasons=["invisible-characters"])
    spaced = sorted(n for n in names
                    if " ".join(unicodedata.normalize("NFKC", n).split()) != n.strip()
                    or n != n.strip())
    if spaced:
        raise InvalidInput(
            f"{what} names may not start or end with a space nor hold two spaces in a row: "
            f"{', '.join(ascii(n) for n in spaced)}.",
            **{member: spaced}, reasons=["irregular-spaces"])


def _check_script(names: Iterable[str], what: str, member: str = "names") -> None:
    _check_visible(names, what, member)
    mixed = sorted(n for n in names if is_mixed_script(n))
    if mixed:
        raise InvalidInput(
            f"{what} names may not mix scripts (Latin with Han, kana, Bopomofo or Hangul is "
            f"fine): {', '.join(ascii(n) for n in mixed)}.",
            **{member: mixed}, reasons=["mixed-script"])


def check_names(names: Sequence[str], what: str, *, key: Callable[[str], str] = str,
                member: str = "names") -> None:
    """Refuse ``names`` of which one mixes scripts or two look alike (the same skeleton of
    their ``key``, e.g. a case fold); ``what`` names them in the message ("Field"), the
    problem's ``member`` lists them and ``groups`` the look-alikes. The message escapes them
    (``ascii``) so the difference shows."""
    _check_script(names, what, member)
    groups = confusable_groups_by(names, key)
    if groups:
        raise InvalidInput(
            f"{what} names must not look alike: "
            + "; ".join(" and ".join(ascii(n) for n in g) for g in groups) + ".",
            **{member: sorted({n for g in groups for n in g})}, groups=groups,
            reasons=["confusable-names"])


def check_new_name(name: str, existing: Iterable[str], what: str, *,
                   key: Callable[[str], str] = str) -> None:
    """Refuse ``name`` when it mixes scripts or looks like one of ``existing`` (the names
    already taken in its scope); ``what`` names it in the message ("Dataset")."""
    _check_script([name], what)
    alike = confusable_with(name, existing, key)
    if alike:
        raise InvalidInput(
            f"The {what.lower()} name {name!a} looks like "
            + ", ".join(ascii(n) for n in alike) + ", which is taken.",
            names=[name, *alike], reasons=["confusable-names"])
