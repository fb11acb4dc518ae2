"""The live progress view of `hpcsera watch`.

On a terminal the table of calls is redrawn in place; into a pipe or a file
one line is written per change of state, so CI logs stay readable.
"""

from __future__ import annotations

import time
from typing import TextIO

from hpcsera_client.client import POLL_MAX, TERMINAL, CallStatus, Client
from hpcsera_client.errors import CallTimeout

UP_AND_CLEAR = "\x1b[{n}F\x1b[J"  # cursor n lines up, clear to the end


def watch_call(
    client: Client, call_id: str, out: TextIO, timeout: float | None = None
) -> CallStatus:
    def show(status: CallStatus) -> None:
        exit_code = "" if status.exit_code is None else f" exit {status.exit_code}"
        out.write(f"{status.id}  {status.function}  {status.state}{exit_code}\n")
        out.flush()

    return client.get_call(call_id).wait(timeout, on_change=show)


def _row(call: dict) -> str:
    exit_code = "" if call.get("exit_code") is None else str(call["exit_code"])
    took = call["timings"].get("duration_seconds")
    took_text = "" if took is None else f"{took:.1f}s"
    return (
        f"{call['id'][:8]}  {call['function'][:24]:<24}  {call['state']:<9}  "
        f"{exit_code:>4}  {took_text:>8}"
    )


def _table(job: dict) -> list[str]:
    done = sum(1 for c in job["calls"] if c["state"] in TERMINAL)
    head = f"job {job['id']}  {job['state']}  {done}/{len(job['calls'])} done"
    return [head, *(_row(call) for call in job["calls"])]


def watch_job(
    client: Client, job_id: str, out: TextIO, timeout: float | None = None
) -> list[str]:
    """Follow a job until every call has finished; the calls' final states."""
    live = out.isatty()
    deadline = None if timeout is None else time.monotonic() + timeout
    drawn: list[str] = []
    interval = 0.1
    while True:
        job = client.job(job_id)
        lines = _table(job)
        _draw(out, lines, drawn, live)
        drawn = lines
        states = [c["state"] for c in job["calls"]]
        if all(s in TERMINAL for s in states):
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise CallTimeout(f"job {job_id} still {job['state']}", job_id)
        client.sleep(interval)
        interval = min(POLL_MAX, interval * 1.5)


def _draw(out: TextIO, lines: list[str], drawn: list[str], live: bool) -> None:
    if live:
        if drawn:
            out.write(UP_AND_CLEAR.format(n=len(drawn)))
        out.write("\n".join(lines) + "\n")
    else:
        # Only what changed: the header when the summary moves, a row when
        # its call's state does.
        for index, line in enumerate(lines):
            if index >= len(drawn) or drawn[index] != line:
                out.write(line + "\n")
    out.flush()
