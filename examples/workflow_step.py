"""A workflow-engine step that runs functions with dependencies between them.

    prepare ──> simulate-a ──┐
            └─> simulate-b ──┴─> summarize

The step submits one job document; the server starts each call once the
calls it runs `after` have succeeded, and runs independent calls at the same
time. The step only follows the job and reports as calls finish.

TODO: the server does not hand a call's output to the calls after it (job
documents carry no data flow yet), so the step collects the simulations'
results itself once the job has ended instead of `summarize` receiving them.
"""

from __future__ import annotations

import json
import os
import sys

from hpcsera_client import CallStatus, Client

JOB = {
    "name": "workflow-step",
    "calls": [
        {"name": "prepare", "function": "hello", "args": {"name": "workflow"}},
        {
            "name": "simulate-a",
            "function": "sleeper",
            "args": {"seconds": "0.3"},
            "after": ["prepare"],
        },
        {
            "name": "simulate-b",
            "function": "sleeper",
            "args": {"seconds": "0.1"},
            "after": ["prepare"],
        },
        {
            "name": "summarize",
            "function": "echo_input",
            "input": {"step": "summarize"},
            "after": ["simulate-a", "simulate-b"],
        },
    ],
}
RESULTS_OF = ("simulate-a", "simulate-b")


def report(status: CallStatus) -> None:
    if status.done:
        print(f"{status.name}: {'done' if status.succeeded else status.state}")


def main() -> int:
    client = Client(os.environ["HPCSERA_SERVER"], os.environ["HPCSERA_TOKEN"])
    job = client.submit_job(JOB)
    calls = {status.name: status for status in job.wait(600, on_change=report)}
    failed = [status for status in calls.values() if not status.succeeded]
    if failed:
        for status in failed:
            print(f"step failed: {status.name}: {status.reason}", file=sys.stderr)
        return 1
    print(json.dumps({name: calls[name].output for name in RESULTS_OF}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
