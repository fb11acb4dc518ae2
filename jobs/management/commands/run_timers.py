"""Fire what is due by the clock: virtual calls past their deadline fail.

Each step reads due rows from the database, so any number of these (or none
for a while) is safe: a late step fires late, never twice.
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from jobs.dag import calls_expire_deadlines


class Command(BaseCommand):
    help = "Fail virtual calls past their deadline, once or every few seconds."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--once", action="store_true")
        parser.add_argument("--interval", type=float, default=2.0)

    def handle(self, *args, once: bool, interval: float, **options) -> None:  # noqa: ANN002, ANN003
        stop = threading.Event()
        if not once:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        while True:
            expired = calls_expire_deadlines()
            if once:
                self.stdout.write(f"{expired} virtual call(s) failed at their deadline")
                return
            if expired < 500:
                stop.wait(interval)
            if stop.is_set():
                return
