"""The eight roles of HPCSerA and the lifetime each one allows a token."""

from __future__ import annotations

import re
from collections.abc import Iterable

GET_JOB_STATUS = "GET_JobStatus"
UPDATE_JOB_STATUS = "UPDATE_JobStatus"
GET_JOB = "GET_Job"
POST_CODE = "POST_Code"
GET_CODE = "GET_Code"
POST_JOB = "POST_Job"
UPDATE_JOB = "UPDATE_Job"
DELETE_JOB = "DELETE_Job"

ALL_ROLES = (
    GET_JOB_STATUS,
    UPDATE_JOB_STATUS,
    GET_JOB,
    POST_CODE,
    GET_CODE,
    POST_JOB,
    UPDATE_JOB,
    DELETE_JOB,
)

DAY = 24 * 3600

# Longest lifetime a token may have when it holds the role. Code roles are the
# most dangerous and live shortest; read-only status lives longest.
DEFAULT_LIFETIME_CAPS = {
    GET_JOB_STATUS: 365 * DAY,
    UPDATE_JOB_STATUS: 90 * DAY,
    GET_JOB: 90 * DAY,
    POST_JOB: 90 * DAY,
    UPDATE_JOB: 90 * DAY,
    DELETE_JOB: 30 * DAY,
    GET_CODE: 7 * DAY,
    POST_CODE: 1 * DAY,
}

TAG_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def parse_roles(names: Iterable[str]) -> frozenset[str]:
    """The roles named, or ValueError naming the first unknown one."""
    roles = set()
    for name in names:
        name = name.strip()
        if name not in ALL_ROLES:
            raise ValueError(f"unknown role {name!r}; known: {', '.join(ALL_ROLES)}")
        roles.add(name)
    if not roles:
        raise ValueError("a token needs at least one role")
    return frozenset(roles)


def lifetime_cap(roles: Iterable[str], caps: dict[str, int]) -> int:
    return min(caps[role] for role in roles)


def valid_tag(tag: str) -> bool:
    return TAG_PATTERN.fullmatch(tag) is not None
