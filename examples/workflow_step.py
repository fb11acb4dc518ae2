"""A workflow-engine step that calls functions with dependencies between them.

    prepare ──> simulate-a ──┐
            └─> simulate-b ──┴─> summarize

Independent calls run at the same time (submitted async); a call starts once
everything it needs has finished, and gets their results as its JSON input.

TODO: once the server accepts job documents (one POST with the calls and their
dependencies), this ordering moves to the server and the step becomes a single
submission; until then the step orders the calls itself.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from hpcsera_client import Call, Client, FunctionFailed


@dataclass
class Step:
    function: str
    args: dict = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)


WORKFLOW = {
    "prepare": Step("hello", {"name": "workflow"}),
    "simulate-a": Step("sleeper", {"seconds": "0.3"}, needs=["prepare"]),
    "simulate-b": Step("sleeper", {"seconds": "0.1"}, needs=["prepare"]),
    "summarize": Step("echo_input", needs=["simulate-a", "simulate-b"]),
}


def run(client: Client, workflow: dict[str, Step]) -> dict[str, object]:
    results: dict[str, object] = {}
    running: dict[str, Call] = {}
    while len(results) < len(workflow):
        for name, step in workflow.items():
            ready = all(need in results for need in step.needs)
            if name not in results and name not in running and ready:
                inputs = {need: results[need] for need in step.needs} or None
                running[name] = client.submit(step.function, step.args, input=inputs)
        if not running:
            raise SystemExit("the workflow has a cycle or an unknown dependency")
        name, handle = next(iter(running.items()))
        results[name] = handle.result(timeout=600)
        del running[name]
        print(f"{name}: done", flush=True)
    return results


def main() -> int:
    client = Client(os.environ["HPCSERA_SERVER"], os.environ["HPCSERA_TOKEN"])
    try:
        results = run(client, WORKFLOW)
    except FunctionFailed as failure:
        print(
            f"step failed: exit {failure.exit_code}: {failure.detail}", file=sys.stderr
        )
        return 1
    print(json.dumps(results["summarize"], sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
