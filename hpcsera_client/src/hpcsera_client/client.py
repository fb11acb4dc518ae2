"""The SDK's entry point: `Client(url, token)`.

client = Client("https://hpcsera.example.org", token)
client.call("hello", {"name": "Ada"})          # the function's result
handle = client.submit("simulate", {"steps": "100"})
handle.wait(timeout=600).output
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import requests

from hpcsera_client.errors import CallTimeout, FunctionFailed
from hpcsera_client.transport import RetryPolicy, Transport
from hpcsera_client.uploads import Code, Upload, code_form

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "lost"})
# Polling starts fast (short functions finish in tens of milliseconds) and
# slows down to this, so a long batch job costs few requests.
POLL_MIN, POLL_MAX = 0.05, 2.0


@dataclass(frozen=True)
class CallStatus:
    """One answer of GET /api/v1/calls/<id>; `raw` holds all of it."""

    id: str
    job_id: str
    function: str
    state: str
    exit_code: int | None
    output: Any
    stdout: str
    stderr_tail: str
    reason: str
    batch_job_id: str | None
    raw: dict
    name: str = ""

    @classmethod
    def from_json(cls, data: dict) -> CallStatus:
        return cls(
            id=data["id"],
            job_id=data["job_id"],
            function=data["function"],
            state=data["state"],
            exit_code=data.get("exit_code"),
            output=data.get("output"),
            stdout=data.get("stdout") or "",
            stderr_tail=data.get("stderr_tail") or "",
            reason=data.get("reason") or "",
            batch_job_id=data.get("batch_job_id"),
            raw=data,
            name=data.get("name") or "",
        )

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def raise_for_state(self) -> None:
        """FunctionFailed when the call ended in anything but success."""
        if self.done and not self.succeeded:
            body = {
                "code": "function_failed",
                "detail": self.reason or f"The call ended {self.state}.",
                **self.raw,
            }
            raise FunctionFailed(502, body)


class Call:
    """A submitted call: poll it, wait for it, take its result."""

    def __init__(self, client: Client, call_id: str, job_id: str):
        self.client = client
        self.id = call_id
        self.job_id = job_id
        self.last: CallStatus | None = None

    def __repr__(self) -> str:
        state = self.last.state if self.last else "submitted"
        return f"<Call {self.id} {state}>"

    def poll(self) -> CallStatus:
        self.last = self.client.call_status(self.id)
        return self.last

    @property
    def done(self) -> bool:
        return (self.last is not None and self.last.done) or self.poll().done

    def wait(
        self,
        timeout: float | None = None,
        on_change: Callable[[CallStatus], None] | None = None,
    ) -> CallStatus:
        """Poll until the call is finished; CallTimeout after `timeout` seconds.

        Returns the final status whatever the outcome; `result()` raises instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval, seen = POLL_MIN, None
        while True:
            status = self.poll()
            if on_change and status.state != seen:
                on_change(status)
            seen = status.state
            if status.done:
                return status
            if deadline is not None and time.monotonic() + interval > deadline:
                raise CallTimeout(
                    f"call {self.id} still {status.state} after {timeout} s", self.id
                )
            self.client.sleep(interval)
            interval = min(POLL_MAX, interval * 1.5)

    def result(self, timeout: float | None = None) -> Any:
        """The function's output (JSON decoded when it is JSON), or FunctionFailed."""
        status = self.wait(timeout)
        status.raise_for_state()
        return status.output

    def cancel(self) -> CallStatus:
        """Cancel the whole job this call belongs to (DELETE_Job), not only it.

        A FaaS submission is a job of one call, so there the two are the same;
        in a job of several calls, every call that has not ended is cancelled.
        The server has no cancellation of a single call. Returns this call's
        status afterwards: `cancelled`, unless it had ended already.
        """
        self.client.cancel_job(self.job_id)
        return self.poll()


class Job:
    """A submitted job document: poll it, wait for all its calls, cancel it."""

    def __init__(self, client: Client, job_id: str, answer: dict | None = None):
        self.client = client
        self.id = job_id
        self.last = answer

    def __repr__(self) -> str:
        state = self.last["state"] if self.last else "submitted"
        return f"<Job {self.id} {state}>"

    def poll(self) -> dict:
        """The job as GET /api/v1/jobs/<id> answers it."""
        self.last = self.client.job(self.id)
        return self.last

    def calls(self) -> list[CallStatus]:
        """The job's calls as last seen (polled once if never seen)."""
        job = self.last or self.poll()
        return [CallStatus.from_json(call) for call in job["calls"]]

    def call(self, name: str) -> Call:
        """A handle on the call of this name in the job document."""
        for status in self.calls():
            if status.name == name:
                return Call(self.client, status.id, self.id)
        raise KeyError(f"job {self.id} has no call named {name!r}")

    @property
    def succeeded(self) -> bool:
        return all(status.succeeded for status in self.calls())

    def wait(
        self,
        timeout: float | None = None,
        on_change: Callable[[CallStatus], None] | None = None,
    ) -> list[CallStatus]:
        """Poll until every call has ended; CallTimeout after `timeout` seconds.

        `on_change` sees each call whenever its state changes. Returns the
        final statuses whatever the outcome.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval, seen = POLL_MIN, {}
        while True:
            self.poll()
            statuses = self.calls()
            for status in statuses:
                if on_change and seen.get(status.id) != status.state:
                    on_change(status)
                seen[status.id] = status.state
            if all(status.done for status in statuses):
                return statuses
            if deadline is not None and time.monotonic() + interval > deadline:
                raise CallTimeout(
                    f"job {self.id} still {self.last['state']} after {timeout} s",
                    self.id,
                )
            self.client.sleep(interval)
            interval = min(POLL_MAX, interval * 1.5)

    def cancel(self) -> dict:
        """Cancel every call that has not ended; the job afterwards."""
        self.last = self.client.cancel_job(self.id)
        return self.last

    def add_calls(self, calls: list[dict]) -> dict:
        """Append calls (as in a job document; `after` may name existing ones)."""
        self.last = self.client.transport.request(
            "POST", f"/api/v1/jobs/{self.id}/calls", json={"calls": calls}
        ).json()
        return self.last


JobDocument = Union[Mapping[str, Any], str, Path]
YAML_SUFFIXES = (".yaml", ".yml")


class Client:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        user: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ):
        """`user` is the FaaS namespace; without it, the token's own user is
        asked of the server (GET /api/v1/capabilities) once, when first needed."""
        self.transport = Transport(
            url, token, timeout=timeout, retry=retry, sleep=sleep, session=session
        )
        self.sleep = sleep
        self._user = user

    @property
    def url(self) -> str:
        return self.transport.url

    @property
    def user(self) -> str:
        if self._user is None:
            self._user = self.capabilities()["token"]["user"]
        return self._user

    def capabilities(self) -> dict:
        return self.transport.request("GET", "/api/v1/capabilities").json()

    def call(
        self,
        function: str,
        args: Mapping[str, Any] | None = None,
        *,
        input: Any = None,
        site: str | None = None,
        time_limit: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run a function and return its result; FunctionFailed when it fails.

        The server holds a sync request up to its wait limit; a call still
        running then is polled here until it ends or `timeout` passes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        response = self._faas("function", function, args, input, site, time_limit)
        if response.status_code == 202:
            handle = self._handle(response.json())
            remaining = None if deadline is None else deadline - time.monotonic()
            return handle.result(timeout=remaining)
        return _result_of(response)

    def submit(
        self,
        function: str,
        args: Mapping[str, Any] | None = None,
        *,
        input: Any = None,
        site: str | None = None,
        time_limit: int | None = None,
    ) -> Call:
        """Queue a function call and return its handle at once."""
        response = self._faas("async-function", function, args, input, site, time_limit)
        return self._handle(response.json())

    def get_call(self, call_id: str) -> Call:
        """A handle on an existing call, e.g. one submitted by another process."""
        handle = Call(self, call_id, "")
        handle.job_id = handle.poll().job_id
        return handle

    def call_status(self, call_id: str) -> CallStatus:
        data = self.transport.request("GET", f"/api/v1/calls/{call_id}").json()
        return CallStatus.from_json(data)

    def job(self, job_id: str) -> dict:
        return self.transport.request("GET", f"/api/v1/jobs/{job_id}").json()

    def jobs(self, limit: int = 50) -> list[dict]:
        answer = self.transport.request("GET", "/api/v1/jobs", params={"limit": limit})
        return answer.json()["jobs"]

    def submit_job(self, document: JobDocument) -> Job:
        """Submit a job document: a mapping, or the path of a YAML or JSON file.

        A file is sent as it is (YAML as application/yaml), so the server's
        own checks and error messages apply to it, lines and all.
        """
        if isinstance(document, Mapping):
            body, content_type = json.dumps(dict(document)), "application/json"
        else:
            path = Path(document)
            body = path.read_bytes()
            yaml_file = path.suffix.lower() in YAML_SUFFIXES
            content_type = "application/yaml" if yaml_file else "application/json"
        answer = self.transport.request(
            "POST",
            "/api/v1/jobs",
            data=body,
            headers={"Content-Type": content_type},
        ).json()
        return Job(self, answer["id"], answer)

    def get_job(self, job_id: str) -> Job:
        handle = Job(self, job_id)
        handle.poll()
        return handle

    def cancel_job(self, job_id: str) -> dict:
        """Cancel every call of the job that has not ended; the job afterwards."""
        return self.transport.request("DELETE", f"/api/v1/jobs/{job_id}").json()

    def finish(self, call_id: str, succeeded: bool, message: str = "") -> CallStatus:
        """End a ready virtual call: succeeded (`message` becomes its output) or
        failed (`message` is its reason)."""
        state = "succeeded" if succeeded else "failed"
        data = self.transport.request(
            "POST",
            f"/api/v1/calls/{call_id}/finish",
            json={"state": state, "message": message},
        ).json()
        return CallStatus.from_json(data)

    def code_upload(
        self,
        function: str,
        *,
        archive: Code | None = None,
        prepare: str = "",
        script: Code | None = None,
        commit: str = "",
        description: str = "",
        site: str = "",
    ) -> Upload:
        """Upload a function's code (POST_Code); it waits for the user's consent.

        `archive` (tar.gz or zip, with `prepare`: the path of its preparation
        executable) or `script` (a single file that becomes the function), each
        a path or bytes. The answer must name the SHA-256 of the bytes sent,
        else DigestMismatch. Like every POST, an upload is never resent after a
        broken connection: run it again, and the user sees two requests.
        """
        fields, files, sha256 = code_form(
            function=function,
            archive=archive,
            prepare=prepare,
            script=script,
            commit=commit,
            description=description,
            site=site,
        )
        # Sized bytes, not a stream: the server refuses chunked uploads.
        answer = self.transport.request(
            "POST", "/api/v1/code", data=fields, files=files
        ).json()
        return Upload(self, answer, sha256)

    def code_status(self, upload_id: str) -> dict:
        """GET /api/v1/code/<id>: state, reason and deployments of an upload."""
        return self.transport.request("GET", f"/api/v1/code/{upload_id}").json()

    def code_withdraw(self, upload_id: str) -> dict:
        """DELETE /api/v1/code/<id>: take a pending upload back; its bytes go."""
        return self.transport.request("DELETE", f"/api/v1/code/{upload_id}").json()

    def get_upload(self, upload_id: str) -> Upload:
        """A handle on an existing upload; its digest is the server's."""
        answer = self.code_status(upload_id)
        return Upload(self, answer, str(answer["sha256"]))

    @classmethod
    def login(
        cls,
        server: str,
        client_id: str,
        key_path: str | Path,
        user: str,
        roles: str,
        tag: str = "default",
        on_code: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
        **options: Any,
    ) -> Client:
        """A client with a token got by the decoupled login (see `login.py`).

        `on_code` is shown the binding code the user compares in the web UI
        before approving. Needs `pip install hpcsera-client[login]`.
        """
        from hpcsera_client.login import request_token

        grant = request_token(
            server, client_id, key_path, user, roles,
            tag=tag, on_code=on_code, sleep=sleep,
        )  # fmt: skip
        return cls(server, grant.token, user=user, sleep=sleep, **options)

    def _handle(self, summary: dict) -> Call:
        return Call(self, summary["call_id"], summary["job_id"])

    def _faas(
        self,
        kind: str,
        function: str,
        args: Mapping[str, Any] | None,
        input: Any,
        site: str | None,
        time_limit: int | None,
    ) -> requests.Response:
        headers = {}
        if site:
            headers["X-Hpcsera-Site"] = site
        if time_limit is not None:
            headers["X-Hpcsera-Time-Limit"] = str(int(time_limit))
        data = None
        if input is not None:
            data = input if isinstance(input, (bytes, str)) else json.dumps(input)
            headers["Content-Type"] = "application/json"
        params = {key: _arg_text(value) for key, value in (args or {}).items()}
        # A sync request is held by the server up to its wait limit: the read
        # timeout must outlast it.
        timeout = max(self.transport.timeout, 120.0) if kind == "function" else None
        return self.transport.request(
            "POST",
            f"/{self.user}/{kind}/{function}",
            params=params,
            data=data,
            headers=headers,
            timeout=timeout,
        )


def _arg_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _result_of(response: requests.Response) -> Any:
    if response.headers.get("Content-Type", "").startswith("application/json"):
        return response.json()
    return response.text
