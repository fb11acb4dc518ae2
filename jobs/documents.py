"""Job documents: a job's calls and their order, sent as JSON or YAML.

Each check fails with a 400 that names the call at fault. Calls without
`after` run after the call listed before them; `after: []` starts at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.conf import settings

from hpcsera.errors import BadInput
from hpcsera.parsers import strict_loads
from jobs import validation

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
CALL_KEYS = {"name", "function", "args", "input", "after", "site", "time_limit"}
CALL_KEYS |= {"virtual"}


@dataclass
class CallSpec:
    name: str
    function: str
    after: list[str] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    input_text: str | None = None
    site: str = ""
    time_limit_seconds: int | None = None
    deadline_seconds: int | None = None  # set only for virtual calls

    @property
    def virtual(self) -> bool:
        return self.deadline_seconds is not None


@dataclass
class JobSpec:
    name: str
    calls: list[CallSpec]
    callback_url: str = ""


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a small document cannot expand into
    a huge one (the "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not accepted")
        return super().compose_node(parent, index)


def load(raw: bytes, content_type: str) -> Any:
    """The document in `raw`, JSON or (by content type) YAML."""
    media = content_type.split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("The body is not UTF-8 text.", code="malformed_document")
    if media in YAML_TYPES:
        try:
            return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - safe subclass
        except RecursionError:
            raise BadInput(
                "The YAML document is nested too deeply.", code="malformed_document"
            )
        except yaml.YAMLError as exc:
            raise BadInput(
                f"The body is not a valid YAML document: {exc}",
                code="malformed_document",
            )
    try:
        return strict_loads(text)
    except ValueError:
        raise BadInput("The body is not a valid JSON document.", code="malformed_json")


def job_spec(doc: Any) -> JobSpec:
    if not isinstance(doc, dict):
        raise BadInput("A job document is a mapping.", code="invalid_job")
    unknown = set(doc) - {"name", "calls", "callback_url"}
    if unknown:
        raise BadInput(f"Unknown job field(s): {sorted(unknown)}.", code="invalid_job")
    name = doc.get("name", "")
    if not isinstance(name, str) or len(name) > 100:
        raise BadInput(
            "The job name is text of at most 100 characters.", code="invalid_job"
        )
    callback_url = doc.get("callback_url", "")
    if not isinstance(callback_url, str):
        raise BadInput("callback_url is a URL.", code="invalid_callback_url")
    calls = call_specs(doc.get("calls"))
    if callback_url:
        # Imported here: the guard reads settings this module need not load.
        from jobs.callbacks import callback_url_check

        callback_url_check(callback_url)
    return JobSpec(name=name, calls=calls, callback_url=callback_url)


def call_specs(raw: Any, existing: frozenset[str] = frozenset()) -> list[CallSpec]:
    """Calls to add to a job whose calls are named `existing`.

    Dependencies may name existing calls and calls of this list; the list
    itself must not form a cycle (existing calls cannot depend on new ones).
    """
    limit = settings.HPCSERA["MAX_JOB_CALLS"]
    if not isinstance(raw, list) or not raw:
        raise BadInput("'calls' is a non-empty list of calls.", code="invalid_job")
    if len(raw) + len(existing) > limit:
        raise BadInput(f"A job has at most {limit} calls.", code="too_many_calls")
    specs: list[CallSpec] = []
    for index, item in enumerate(raw):
        previous = specs[-1].name if specs else None
        specs.append(_call_spec(item, index, previous))
    _check_names(specs, existing)
    _check_acyclic(specs)
    return specs


def _call_spec(item: Any, index: int, previous: str | None) -> CallSpec:
    where = f"call {index + 1}"
    if not isinstance(item, dict):
        raise _bad(where, "is not a mapping")
    unknown = set(item) - CALL_KEYS
    if unknown:
        raise _bad(where, f"has unknown field(s) {sorted(unknown)}")
    virtual = item.get("virtual")
    function = item.get("function")
    if function is None and virtual is None:
        raise _bad(where, "names no function")
    spec = CallSpec(name="", function="")
    spec.function = _checked(where, validation.function_name, function or "virtual")
    spec.name = _checked(
        where, validation.function_name, item.get("name", spec.function)
    )
    where = f"call {spec.name!r}"
    after = item.get("after", [previous] if previous else [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise _bad(where, "'after' is a list of call names", spec.name)
    spec.after = list(dict.fromkeys(after))
    args = item.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        raise _bad(where, "'args' maps names to text values", spec.name)
    spec.args = _checked(where, validation.arguments, list(args.items()))
    if "input" in item:
        spec.input_text = json.dumps(item["input"], default=_not_json(where))
    site = item.get("site", "")
    spec.site = _checked(where, validation.site_name, site) if site else ""
    if "time_limit" in item:
        spec.time_limit_seconds = _checked(
            where, validation.time_limit, str(item["time_limit"])
        )
    if virtual is not None:
        seconds = virtual.get("deadline_seconds") if isinstance(virtual, dict) else 0
        if type(seconds) is not int or not 1 <= seconds <= 366 * 24 * 3600:
            raise _bad(
                where, "'virtual' needs deadline_seconds, 1 s to a year", spec.name
            )
        spec.deadline_seconds = seconds
    return spec


def _check_names(specs: list[CallSpec], existing: frozenset[str]) -> None:
    seen = set(existing)
    for spec in specs:
        if spec.name in seen:
            raise BadInput(
                f"The call name {spec.name!r} is used twice.",
                code="duplicate_call_name",
                call=spec.name,
            )
        seen.add(spec.name)
    for spec in specs:
        for name in spec.after:
            if name not in seen:
                raise BadInput(
                    f"The call {spec.name!r} runs after {name!r}, which the job "
                    "does not have.",
                    code="unknown_dependency",
                    call=spec.name,
                    dependency=name,
                )


def _check_acyclic(specs: list[CallSpec]) -> None:
    """Depth-first search over the new calls; reports one cycle, in order."""
    after = {s.name: [a for a in s.after] for s in specs}
    state: dict[str, str] = {}  # "open" on the current path, "done" when cleared
    for root in after:
        if root in state:
            continue
        path = [root]
        stack = [iter(after[root])]
        state[root] = "open"
        while stack:
            name = next(stack[-1], None)
            if name is None:
                state[path.pop()] = "done"
                stack.pop()
                continue
            if name not in after or state.get(name) == "done":
                continue  # an existing call, or checked already
            if state.get(name) == "open":
                cycle = path[path.index(name) :] + [name]
                raise BadInput(
                    "The calls depend on each other in a cycle: "
                    + " -> ".join(cycle)
                    + ".",
                    code="dependency_cycle",
                    call=name,
                    cycle=cycle,
                )
            state[name] = "open"
            path.append(name)
            stack.append(iter(after[name]))


def _checked(where: str, check, value):
    try:
        return check(value)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc.detail}", code=exc.code, **exc.extra)
    except TypeError:
        raise _bad(where, "has a value of the wrong type")


def _not_json(where: str):
    def refuse(value: Any) -> Any:
        raise BadInput(f"{where}: 'input' holds {type(value).__name__}, not JSON data.")

    return refuse


def _bad(where: str, what: str, call: str | None = None) -> BadInput:
    extra = {"call": call} if call else {}
    return BadInput(f"The {where} {what}.", code="invalid_call", **extra)
