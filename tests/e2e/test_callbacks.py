"""A job's callback through every real part: gunicorn, PostgreSQL, a Celery
worker on Redis, and a receiver on 127.0.0.1 started here."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests import harness

pytestmark = pytest.mark.e2e


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.posts: list[tuple[dict, bytes]] = []
        self.arrived = threading.Event()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.posts.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                received.arrived.set()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def worker_server(tmp_path):
    broker = os.environ.get("REDIS_URL", "")
    if not broker:
        pytest.skip("needs Redis (REDIS_URL) as the Celery broker; .ci/run sets it")
    server = harness.start_server(
        tmp_path,
        HPCSERA_CALLBACK_ALLOW_LOOPBACK="1",
        CELERY_BROKER_URL=broker,
        # A queue of this test's own: no other worker on this Redis takes it.
        HPCSERA_CELERY_QUEUE=f"hpcsera-e2e-{uuid.uuid4().hex[:8]}",
    )
    worker = subprocess.Popen(
        [harness.PYTHON, "-m", "celery", "-A", "hpcsera", "worker"]
        + ["--pool", "solo", "--without-gossip", "--without-mingle"]
        + ["--queues", server.env["HPCSERA_CELERY_QUEUE"], "--loglevel", "WARNING"],
        cwd=harness.ROOT,
        env=server.env,
        stdout=open(tmp_path / "worker.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    yield server
    worker.terminate()
    worker.wait(timeout=30)
    server.stop()
    # The queue's bookkeeping in Redis goes with the test.
    import redis

    queue = server.env["HPCSERA_CELERY_QUEUE"]
    client = redis.Redis.from_url(broker)
    client.delete(queue, *client.keys(f"_kombu.binding*.{queue}"))


def test_a_celery_worker_posts_a_jobs_callback_signed(worker_server):
    receiver = Receiver()
    token_line, secret_line = worker_server.manage(
        "issue_token",
        "--user",
        "carol",
        "--create-user",
        "--roles",
        "POST_Job,GET_JobStatus,UPDATE_JobStatus",
        "--show-callback-secret",
    ).splitlines()
    secret = secret_line.removeprefix("callback-secret: ")
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token_line}"
    url = f"http://127.0.0.1:{receiver.server_port}/done"

    job = api.post(
        worker_server.url + "/api/v1/jobs",
        json={
            "callback_url": url,
            "calls": [{"name": "approval", "virtual": {"deadline_seconds": 600}}],
        },
    ).json()
    call_id = job["calls"][0]["id"]
    finished = api.post(
        f"{worker_server.url}/api/v1/calls/{call_id}/finish",
        json={"state": "succeeded", "message": "approved"},
    )
    assert finished.status_code == 200

    # A bound on waiting, not a timing assertion: the worker sends at once.
    assert receiver.arrived.wait(60), "no callback arrived"
    [(headers, body)] = receiver.posts
    fields = dict(p.split("=", 1) for p in headers["X-Hpcsera-Signature"].split(","))
    mac = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(mac.hexdigest(), fields["v1"])
    sent = json.loads(body)
    assert sent["event"] == "job.ended" and sent["job_id"] == job["id"]
    assert sent["calls"][0]["output"] == "approved"
    for _ in range(300):
        detail = api.get(f"{worker_server.url}/api/v1/jobs/{job['id']}").json()
        if detail["callback"]["state"] != "pending":
            break
        time.sleep(0.1)
    assert detail["callback"]["state"] == "delivered"
    assert detail["callback"]["history"][0]["status"] == 200
    receiver.shutdown()
    receiver.server_close()
