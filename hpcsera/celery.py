"""The Celery app (`celery -A hpcsera worker`): it sends callbacks.

Tasks carry only ids; the schedule lives in database rows (jobs.callbacks),
so no task waits in the broker with a long countdown.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hpcsera.settings")

app = Celery("hpcsera")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["jobs"])
