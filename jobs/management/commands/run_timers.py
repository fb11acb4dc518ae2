"""Fire what is due by the clock: virtual calls past their deadline fail, code
uploads nobody approved in time expire (their bytes deleted), and callbacks are
sent (queued for a Celery worker when a broker is configured,
else sent from this process) or retried.

Each step reads due rows from the database, so any number of these (or none
for a while) is safe: a late step fires late, never twice.
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from consent.code import uploads_expire_due
from jobs.callbacks import deliveries_dispatch, jobs_callbacks_sweep
from jobs.dag import calls_expire_deadlines


class Command(BaseCommand):
    help = "Fail virtual calls past their deadline and send due callbacks."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true")
        parser.add_argument("--interval", type=float, default=2.0)

    def handle(self, *args, once: bool, interval: float, **options) -> None:
        stop = threading.Event()
        if not once:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        while True:
            expired = calls_expire_deadlines()
            uploads_expire_due()
            jobs_callbacks_sweep()
            sent = deliveries_dispatch()
            if once:
                self.stdout.write(f"{expired} virtual call(s) failed at their deadline")
                self.stdout.write(f"{sent} callback(s) sent or queued")
                return
            if expired < 500 and sent == 0:
                stop.wait(interval)
            if stop.is_set():
                return
