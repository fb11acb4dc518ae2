"""Defaults for the production server; gunicorn reads this file from the working
directory. Every setting can still be overridden on the command line."""

import os
import signal

bind = os.environ.get("HPCSERA_BIND", "127.0.0.1:8000")
worker_class = "gthread"
# Sync FaaS requests and agents' long-polls each hold a thread while they wait,
# so a worker needs many threads; they sleep on an event, not on the CPU.
threads = int(os.environ.get("HPCSERA_THREADS", "64"))
workers = int(os.environ.get("HPCSERA_WORKERS", "1"))
graceful_timeout = 10
# Function arguments travel in the query string; 8190 is gunicorn's maximum.
limit_request_line = 8190


def _release_waiters() -> None:
    from hpcsera.notify import hub

    hub().close()


def worker_int(worker):
    _release_waiters()


def post_worker_init(worker):
    # A graceful stop (TERM) would otherwise wait for every long-poll to run
    # out. Waiters released early answer as if their wait had ended: a sync
    # call with 202 and its status URL, a long-poll with no work.
    graceful = worker.handle_exit

    def handle_exit(sig, frame):
        _release_waiters()
        graceful(sig, frame)

    signal.signal(signal.SIGTERM, handle_exit)
