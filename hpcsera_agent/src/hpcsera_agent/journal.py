"""The agent's journal: what it holds, recorded on disk before it acts.

One JSON file per call in `<state_dir>/journal/` (mode 0700, files 0600),
replaced atomically (write, fsync, rename), so a kill at any moment leaves
either the old or the new record, never half of one. A record moves through
these phases; each is written *before* the step it names:

- `claimed`: the server leased the call to this agent; nothing ran yet.
- `started`: a local process (or `srun`) is about to start, or runs.
- `submitting`: `sbatch`/`qsub` is about to run, under the job name derived
  from the call id; `batch_job_id` is not known yet.
- `submitted`: the batch system accepted the job; `batch_job_id` is set.
- `reporting`: the final report is in the record and not yet acknowledged.

The record is removed once the server acknowledged (or refused) the final
report. See `service.Agent.recover` for what a restart does with each phase.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CALL_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
PHASES = ("claimed", "started", "submitting", "submitted", "reporting")


class Journal:
    def __init__(self, state_dir: Path):
        self.folder = state_dir / "journal"
        self._lock = threading.Lock()  # record() reads, merges and writes
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder.mkdir(exist_ok=True, mode=0o700)
        # mkdir's mode is filtered by the umask and ignored for existing folders.
        os.chmod(state_dir, 0o700)
        os.chmod(self.folder, 0o700)

    def _path(self, call_id: str, suffix: str = ".json") -> Path:
        if not CALL_ID.fullmatch(call_id):
            raise ValueError(f"not a call id: {call_id!r}")
        return self.folder / (call_id + suffix)

    def get(self, call_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(call_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            # Only a disk fault can leave a broken file: replace() is atomic.
            logger.error("%s journal record is unreadable; ignored", call_id)
            return None

    def record(self, call_id: str, phase: str, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the call's record, set its phase, make it durable."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        with self._lock:
            entry = self.get(call_id) or {"call_id": call_id}
            entry.update(fields, phase=phase, updated=time.time())
            temporary = self._path(call_id, ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entry, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self._path(call_id))
            self._sync_folder()
        return entry

    def forget(self, call_id: str) -> None:
        for suffix in (".json", ".lock"):
            try:
                self._path(call_id, suffix).unlink()
            except FileNotFoundError:
                pass

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every record, in the order the calls were accepted (`order`), so a
        call of a chain comes after the calls it runs after."""
        found = [self.get(path.stem) for path in self.folder.glob("*.json")]
        kept = [e for e in found if e is not None]
        yield from sorted(kept, key=lambda e: (e.get("order", 0), e["call_id"]))

    @contextmanager
    def submission_lock(self, call_id: str, timeout: float) -> Iterator[int]:
        """An exclusive lock on the call's submission, as an inheritable fd.

        Handed to `sbatch`/`qsub`, the lock stays held while that command runs,
        even when the agent is killed meanwhile. A restarted agent takes the
        lock before it looks for the job by name, so it never looks while an
        orphaned submission may still be creating the job.
        """
        fd = os.open(self._path(call_id, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock(fd, timeout)
            yield fd
        finally:
            os.close(fd)

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _lock(fd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError("a submission of this call is still running")
            time.sleep(0.05)
