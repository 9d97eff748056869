"""The lessons' words, in English and in the course's Chinese: one dict per language
(`lessons.i18n.en`, `lessons.i18n.zh`), the same keys and the same ``{placeholders}`` in both
(tests/lessons/test_i18n.py checks it).

    from lessons.i18n import t
    t("daemon.title")                # in the language chosen by `set_language`
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum


class Lang(StrEnum):
    zh = "zh"
    en = "en"


def _table(lang: Lang) -> Mapping[str, str]:
    if lang is Lang.zh:
        from lessons.i18n.zh import STRINGS
    else:
        from lessons.i18n.en import STRINGS
    return STRINGS


def from_locale(environ: Mapping[str, str] | None = None) -> Lang:
    """The language the locale asks for: the first of LC_ALL, LC_MESSAGES, LANG that is set
    (the order POSIX gives them); zh if it starts with ``zh``, otherwise English."""
    env = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name, "")
        if value:
            return Lang.zh if value.lower().startswith("zh") else Lang.en
    return Lang.en


_current: Lang = from_locale()


def set_language(lang: Lang | str) -> None:
    global _current
    _current = Lang(lang)


def language() -> Lang:
    return _current


def t(key: str, **values: object) -> str:
    """The text of `key` in the current language, its ``{placeholders}`` filled in."""
    return _table(_current)[key].format(**values)


def yes_no(value: bool) -> str:
    return t("yes") if value else t("no")
