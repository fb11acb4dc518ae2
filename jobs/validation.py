"""Checks on what clients send, each failing with a 400 that names the problem."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from django.conf import settings

from hpcsera.errors import BadInput
from hpcsera.parsers import strict_loads

FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ARG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def function_name(name: str) -> str:
    # "." and ".." match the character class but name folders, not functions.
    if not FUNCTION_NAME.fullmatch(name) or set(name) == {"."}:
        raise BadInput(
            "A function name is 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and "
            "'-', and not only dots.",
            code="invalid_function_name",
        )
    return name


def site_name(name: str) -> str:
    if not SITE_NAME.fullmatch(name):
        raise BadInput(
            "A site name is 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-'.",
            code="invalid_site",
        )
    return name


def query_pairs(query_string: str) -> list[tuple[str, str]]:
    """The query string's pairs; text that is not UTF-8 is refused, not patched."""
    try:
        return parse_qsl(query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadInput("The query string is not valid UTF-8.", code="invalid_argument")


def arguments(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    limits = settings.HPCSERA
    args: dict[str, str] = {}
    for key, value in pairs:
        if not ARG_KEY.fullmatch(key):
            raise BadInput(
                f"Argument {key[:64]!r} is not an identifier "
                "([A-Za-z_][A-Za-z0-9_]*, at most 64 characters).",
                code="invalid_argument",
            )
        if key in args:
            raise BadInput(f"Argument {key!r} is given twice.", code="invalid_argument")
        if len(value) > limits["MAX_ARG_VALUE_CHARS"]:
            raise BadInput(
                f"Argument {key!r} is longer than {limits['MAX_ARG_VALUE_CHARS']} "
                "characters.",
                code="argument_too_long",
            )
        if "\x00" in value:
            raise BadInput(
                f"Argument {key!r} contains a NUL character.", code="invalid_argument"
            )
        args[key] = value
    if len(args) > limits["MAX_ARGS"]:
        raise BadInput(
            f"At most {limits['MAX_ARGS']} arguments are allowed.",
            code="too_many_arguments",
        )
    return args


def json_body(raw: bytes) -> str | None:
    """The body as text when it is one JSON document; None when empty."""
    if len(raw) > settings.HPCSERA["MAX_BODY_BYTES"]:
        raise body_too_large()
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
        strict_loads(text)
    except (UnicodeDecodeError, ValueError):
        raise BadInput("The body is not a valid JSON document.", code="malformed_json")
    return text


def body_too_large() -> BadInput:
    limit = settings.HPCSERA["MAX_BODY_BYTES"]
    return BadInput(
        f"The body is larger than the limit of {limit} bytes; pass large data by "
        "reference (a path or URL).",
        code="body_too_large",
        max_body_bytes=limit,
    )


def time_limit(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 366 * 24 * 3600:
        raise BadInput(
            "The time limit is a whole number of seconds from 1 to one year.",
            code="invalid_time_limit",
        )
    return int(raw)


def is_json(text: str) -> bool:
    try:
        strict_loads(text)
    except ValueError:
        return False
    return True
