"""`manage.py expire_leases`: one sweep over calls whose lease ran out.

The server expires leases lazily (see jobs.leases); this command is for cron or
a systemd timer, so that calls of dead agents end `lost` or go back to the queue
even when nobody claims or reads. Safe to run in many places at once.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from jobs.leases import SWEEP_BATCH, leases_expire


class Command(BaseCommand):
    help = "Requeue (idempotent) or lose (others) the calls whose lease ran out."

    def handle(self, *args, **options) -> None:
        total = 0
        while True:
            done = leases_expire()
            total += done
            if done < SWEEP_BATCH:
                break
        self.stdout.write(f"{total} expired lease(s)")
