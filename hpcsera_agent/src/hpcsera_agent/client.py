"""The agent's side of the agent API. Every connection goes out to the server."""

from __future__ import annotations

import json
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import requests

from hpcsera_agent import __version__


class ServerUnavailable(Exception):
    """The server could not be reached or failed; trying again later may work."""


class Refused(Exception):
    """The server refused the request (4xx); trying again will not help."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Client:
    def __init__(self, server: str, token: str, timeout: float = 30.0):
        self._base = server.rstrip("/") + "/api/agent/v1"
        self._headers = {
            "User-Agent": f"hpcsera-agent/{__version__}",
            "Content-Type": "application/json",
        }
        self._authorization = f"Bearer {token}"
        self._timeout = timeout
        # New with every agent process: the server leases nothing to the claims
        # of an earlier process of this agent, e.g. a long-poll it left behind.
        self.session = uuid.uuid4().hex
        # requests sessions are not safe to share between threads; each thread
        # keeps its own, and so its own kept-alive connection.
        self._local = threading.local()
        self.last_cancel: list[dict[str, Any]] = []
        self.last_deploy: list[dict[str, Any]] = []

    def set_token(self, token: str) -> None:
        """Use `token` from the next request on (after a renewed login)."""
        self._authorization = f"Bearer {token}"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            self._local.session = session
        return session

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            # Output is sent as UTF-8 as it is: escaping every non-ASCII
            # character would make a report up to six times larger.
            response = self._session().post(
                self._base + path,
                data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                headers={"Authorization": self._authorization},
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise ServerUnavailable(f"{type(exc).__name__} talking to the server")
        return _answer(response)

    def _get(self, path: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            response = self._session().get(
                self._base + path,
                params=params,
                headers={"Authorization": self._authorization},
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise ServerUnavailable(f"{type(exc).__name__} talking to the server")
        return _answer(response)

    def register(
        self, site: str, capabilities: list[str], functions: list[dict[str, Any]]
    ) -> dict[str, Any]:
        body = {
            "site": site,
            "capabilities": capabilities,
            "functions": functions,
            "version": __version__,
            "session": self.session,
        }
        return self._post("/agents", body, self._timeout)

    def claim(
        self,
        agent_id: str,
        max_calls: int,
        wait: float,
        chain: bool = False,
        deploy: bool = False,
    ) -> list[dict[str, Any]]:
        body = {"max": max_calls, "wait": wait, "session": self.session}
        if chain:
            body["chain"] = True
        if deploy:
            body["deploy"] = True
        data = self._post(f"/agents/{agent_id}/claim", body, wait + self._timeout)
        # Calls cancelled while this agent holds them (see cancel.py), and
        # approved code to install (deploy.py).
        self.last_cancel = list(data.get("cancel", []))
        self.last_deploy = list(data.get("deploy", []))
        return list(data.get("calls", []))

    def deployment_download(
        self, agent_id: str, deployment_id: str, target: Path, max_bytes: int
    ) -> None:
        """Stream the approved archive into `target`, refusing beyond `max_bytes`."""
        url = f"{self._base}/agents/{agent_id}/deployments/{deployment_id}/archive"
        try:
            with self._session().get(
                url,
                headers={"Authorization": self._authorization},
                timeout=self._timeout,
                stream=True,
            ) as response:
                if response.status_code >= 400:
                    _answer(response)
                written = 0
                with open(target, "wb") as handle:
                    for chunk in response.iter_content(64 * 1024):
                        written += len(chunk)
                        if written > max_bytes:
                            raise Refused(
                                200, "too_large", f"more than {max_bytes} bytes"
                            )
                        handle.write(chunk)
        except requests.RequestException as exc:
            raise ServerUnavailable(f"{type(exc).__name__} talking to the server")

    def deployment_report(
        self, agent_id: str, deployment_id: str, report: dict[str, Any]
    ) -> dict[str, Any]:
        return self._post(
            f"/agents/{agent_id}/deployments/{deployment_id}/report",
            report,
            self._timeout,
        )

    def heartbeat(
        self, agent_id: str, call_ids: list[str], complete: bool = False
    ) -> dict[str, Any]:
        body = {"calls": call_ids, "complete": complete}
        return self._post(f"/agents/{agent_id}/heartbeat", body, self._timeout)

    def report(
        self, agent_id: str, call_id: str, report: dict[str, Any]
    ) -> dict[str, Any]:
        return self._post(
            f"/agents/{agent_id}/calls/{call_id}/report", report, self._timeout
        )

    def approval_request(self, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._post(f"/agents/{agent_id}/approvals", body, self._timeout)

    def approval_get(
        self, agent_id: str, approval_id: str, wait: float
    ) -> dict[str, Any]:
        """The approval's state, held by the server up to `wait` s while pending."""
        return self._get(
            f"/agents/{agent_id}/approvals/{approval_id}",
            {"wait": wait},
            wait + self._timeout,
        )


def _answer(response: requests.Response) -> dict[str, Any]:
    """The JSON body of a success; ServerUnavailable or Refused otherwise."""
    if response.status_code >= 500 or response.status_code == 429:
        raise ServerUnavailable(f"server answered {response.status_code}")
    try:
        data = response.json()
    except ValueError:
        raise ServerUnavailable(f"server answered {response.status_code} without JSON")
    if response.status_code >= 400:
        raise Refused(
            response.status_code,
            str(data.get("code", "")),
            str(data.get("detail", "")),
        )
    return data


def backoff(attempt: int, base: float = 0.5, cap: float = 60.0) -> float:
    """Seconds before try `attempt` (1-based): exponential with full jitter."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 16))))  # noqa: S311
