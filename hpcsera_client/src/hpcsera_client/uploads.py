"""Code uploads: send a function's code, wait for the user's consent, then for
the agents to install it.

upload = client.code_upload("simulate", archive="simulate.tar.gz", prepare="prepare.sh")
print(upload.sha256)          # the user compares it with the web UI's
upload.wait_deployed(timeout=900)

Nothing uploaded runs anywhere before the user approved exactly these bytes in
the web UI; the SDK checks that the server received the bytes it sent.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

from hpcsera_client.errors import (
    DeploymentFailed,
    DigestMismatch,
    HpcseraError,
    UploadRejected,
    UploadTimeout,
    parse_retry_after,
)

if TYPE_CHECKING:
    from hpcsera_client.client import Client

Code = Union[str, Path, bytes]
REJECTED = frozenset({"denied", "expired"})
# A person approves in the web UI and an agent installs within seconds, so a
# poll every few seconds is soon enough and costs little.
POLL_MIN, POLL_MAX = 1.0, 5.0
RETRY_AFTER_MAX = 60.0


def read_code(code: Code) -> tuple[bytes, str]:
    """The bytes to send and the file name to send them under."""
    if isinstance(code, bytes):
        return code, ""
    path = Path(code)
    return path.read_bytes(), path.name


def code_form(
    *,
    function: str,
    archive: Code | None,
    prepare: str,
    script: Code | None,
    commit: str,
    description: str,
    site: str,
) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]], str]:
    """Fields, file part and SHA-256 of a POST /api/v1/code."""
    if (archive is None) == (script is None):
        raise ValueError("give exactly one of archive (with prepare) and script")
    if archive is not None and not prepare:
        raise ValueError("an archive needs prepare: the path of its preparation step")
    if script is not None and prepare:
        raise ValueError("a script has no preparation step; send an archive")
    field, code = ("archive", archive) if archive is not None else ("script", script)
    assert code is not None
    data, name = read_code(code)
    fields = {"function": function, "prepare": prepare, "commit": commit}
    fields.update(description=description, site=site)
    files = {field: (name or field, data, "application/octet-stream")}
    return fields, files, hashlib.sha256(data).hexdigest()


class Upload:
    """An upload waiting for consent, then deployed: poll it, wait for it.

    `sha256` is the digest computed here of the bytes sent, and already checked
    against the server's answer; `last` is the latest answer of the server.
    """

    def __init__(self, client: Client, answer: dict, sha256: str):
        self.client = client
        self.id = str(answer["id"])
        self.sha256 = sha256
        self.last = answer
        self.retry_after: float | None = None
        self._check_digest(answer)

    def __repr__(self) -> str:
        return f"<Upload {self.id} {self.state}>"

    @property
    def state(self) -> str:
        return str(self.last.get("state") or "pending")

    @property
    def consent_url(self) -> str:
        return str(self.last.get("consent_url") or "")

    @property
    def deployments(self) -> list[dict]:
        return list(self.last.get("deployments") or [])

    def refresh(self) -> dict:
        """GET /api/v1/code/<id>: state, reason and deployments, as answered."""
        response = self.client.transport.request("GET", f"/api/v1/code/{self.id}")
        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        answer = response.json()
        self._check_digest(answer)
        self.last = answer
        return answer

    def wait_approved(
        self,
        timeout: float | None = None,
        on_change: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll until the user approved; UploadRejected when denied or expired,
        UploadTimeout after `timeout` seconds (the upload may still be approved)."""
        return self._wait(timeout, self._approved, "approved", on_change)

    def wait_deployed(
        self,
        timeout: float | None = None,
        sites: list[str] | None = None,
        on_change: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll until one deployment (or one on each of `sites`) is `deployed`.

        Waits for the approval first. A failed deployment that counts (any, or
        one on a named site) raises DeploymentFailed, unless what was asked is
        already met by then.
        """
        wanted = set(sites or [])

        def deployed(answer: dict) -> bool:
            if not self._approved(answer):
                return False
            done = {d["site"] for d in answer.get("deployments") or []
                    if d["state"] == "deployed"}  # fmt: skip
            if wanted <= done and (wanted or done):
                return True
            for deployment in answer.get("deployments") or []:
                counts = not wanted or deployment["site"] in wanted - done
                if deployment["state"] == "failed" and counts:
                    raise DeploymentFailed(
                        self.id,
                        deployment["site"],
                        deployment.get("reason") or "",
                        deployment.get("log_tail") or "",
                    )
            return False

        return self._wait(timeout, deployed, "deployed", on_change)

    def _approved(self, answer: dict) -> bool:
        if answer["state"] in REJECTED:
            raise UploadRejected(self.id, answer["state"], answer.get("reason") or "")
        return answer["state"] == "approved"

    def _wait(
        self,
        timeout: float | None,
        reached: Callable[[dict], bool],
        goal: str,
        on_change: Callable[[dict], None] | None,
    ) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        interval, seen = POLL_MIN, None
        while True:
            answer = self.refresh()
            progress = (answer["state"], _deployment_states(answer))
            if on_change and progress != seen:
                on_change(answer)
            seen = progress
            if reached(answer):
                return answer
            pause = interval
            if self.retry_after is not None:
                pause = min(max(self.retry_after, POLL_MIN), RETRY_AFTER_MAX)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise UploadTimeout(
                    f"upload {self.id} not {goal} after {timeout} s "
                    f"(still {answer['state']})",
                    self.id,
                )
            self.client.sleep(pause)
            interval = min(POLL_MAX, interval * 1.5)

    def _check_digest(self, answer: dict) -> None:
        # Denied and expired uploads keep their digest; only the bytes go.
        received = str(answer.get("sha256") or "")
        if received == self.sha256:
            return
        # Bytes nobody sent must not wait for an approval: take them back.
        withdrawn = False
        if answer.get("state") == "pending":
            try:
                self.client.code_withdraw(self.id)
                withdrawn = True
            except HpcseraError:
                pass
        raise DigestMismatch(self.id, self.sha256, received, withdrawn=withdrawn)


def _deployment_states(answer: dict) -> tuple:
    return tuple(
        (d.get("agent_id"), d["state"]) for d in answer.get("deployments") or []
    )
