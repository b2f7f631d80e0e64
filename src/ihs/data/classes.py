"""The rule for class names (the NAME of ``NAME=SPEC``), shared by every command and ``ihs run``'s config.

A class name becomes a label in stores, a key in JSON results, part of file names and text in the
terminal and the HTML report, so it is kept to a safe character set: letters, digits, ``_``, ``.``
and ``-`` (at most 64 characters). Two prompt sets under one name would merge silently under that
label, so duplicate names are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ihs.errors import DataError

CLASS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CLASS_NAME_RULE = "letters, digits, '_', '.' or '-' (at most 64)"


def check_class_name(name: str, *, where: str = "--data") -> str:
    """``name`` when it is a valid class name; else :class:`DataError` saying the rule."""
    if not isinstance(name, str) or not CLASS_NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise DataError(f"{where}: class name {shown} must be {CLASS_NAME_RULE}")
    return name


def check_class_names(names: Iterable[str], *, where: str = "--data") -> list[str]:
    """Every name valid and none repeated (two sets under one name would merge silently)."""
    seen: list[str] = []
    for name in names:
        check_class_name(name, where=where)
        if name in seen:
            raise DataError(f"{where}: class name {name!r} is given twice; give each prompt set its own name "
                            "(or combine the files in one set)")
        seen.append(name)
    return seen


def check_data_specs(specs: Iterable[str], *, where: str = "--data") -> list[tuple[str, str]]:
    """Parse ``NAME=SPEC`` strings and apply the class-name rule to their names."""
    from ihs.data.loaders import parse_named_spec

    pairs = [parse_named_spec(s) for s in specs]
    check_class_names([name for name, _ in pairs], where=where)
    return pairs
