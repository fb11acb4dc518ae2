"""The agent's work loop, built from single steps that tests can drive one by one.

Every call the agent holds is in its journal (journal.py) before anything
happens to it, and leaves it only when the server has acknowledged its end.
`recover` picks up where a killed agent stopped:

- `claimed`: nothing ran yet; it runs now.
- `started`: a local process (or `srun`) was interrupted. A process left behind
  is killed; the call runs again when its function is idempotent, and is
  otherwise reported failed, since it may have done part of its work.
- `submitting`: `sbatch`/`qsub` may or may not have created the job. Once any
  submission still running has ended (journal.submission_lock), the job is
  looked up by its name; found, the agent attaches to it, else it submits.
- `submitted`: the batch job is followed again.
- `reporting`: the final report is sent again.

A call leased with `after` (a chain handed to the batch system, see
jobs.chains on the server) is submitted with `--dependency=afterok:` on the
batch jobs of the calls it names, once they have batch job ids. Records keep
the order calls were accepted in, so predecessors are resumed, followed and
reported before their dependents.

Before it claims anything, a starting agent tells the server every call it
holds; calls leased to it that it does not name never reached it (the answer
to a claim was lost with the killed process) and go back to the queue.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hpcsera_agent import (
    approval,
    batch,
    cancel,
    consent,
    deploy,
    pbs,
    runners,
    slurm,
)
from hpcsera_agent.client import Client, Refused, ServerUnavailable, backoff
from hpcsera_agent.config import Config
from hpcsera_agent.journal import Journal

logger = logging.getLogger(__name__)

BACKENDS = {"slurm": slurm, "pbs": pbs}
LOCK_WAIT = batch.COMMAND_TIMEOUT * 2
DEPLOY_ATTEMPTS = 5


class AlreadyRunning(Exception):
    """Another agent process uses the same state folder."""


class Agent:
    def __init__(self, config: Config, client: Client | None = None):
        self.config = config
        self.client = client or Client(config.server, config.token)
        self.stop = threading.Event()
        self.agent_id: str | None = None
        self.journal = Journal(config.state_dir)
        self.heartbeat_seconds = 60.0
        self._last_heartbeat = 0.0
        self._inventory: dict[str, dict[str, Any]] = {}
        self._pool = ThreadPoolExecutor(config.max_parallel, thread_name_prefix="call")
        # One deployment at a time: two versions of a function installing at
        # once would race for its link.
        self._deployer = ThreadPoolExecutor(1, thread_name_prefix="deploy")
        self._deploying: set[str] = set()
        self._busy = 0
        self._busy_changed = threading.Condition()
        self._register_lock = threading.Lock()
        self._doubt: dict[str, float] = {}  # call id -> since when its job is unclear
        self._active: set[str] = set()  # calls a worker thread is on
        self._lock_fd: int | None = None
        # Batch job ids of calls submitted by this process, kept after their
        # records are gone: a chain's later step may be submitted after its
        # predecessor ended and was reported.
        self._batch_ids: dict[str, str] = {}

    def take_state_folder(self) -> None:
        """Refuse to run beside another agent on the same journal."""
        fd = os.open(
            self.config.state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another agent uses {self.config.state_dir}")
        self._lock_fd = fd

    # -- inventory ---------------------------------------------------------

    def capabilities(self) -> list[str]:
        found = ["local"]
        slurm_cmds = (self.config.slurm.sbatch, self.config.slurm.srun)
        if all(shutil.which(c) for c in slurm_cmds):
            found.append("slurm")
        if shutil.which(self.config.pbs.qsub):
            found.append("pbs")
        return found

    def scan_inventory(self) -> dict[str, dict[str, Any]]:
        folder = self.config.functions_dir
        inventory = {}
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                # Hidden files are not offered: editors and tools leave them.
                if entry.name.startswith("."):
                    continue
                if runners.find_executable(folder, entry.name) is None:
                    continue
                settings = self.config.function_settings(entry.name)
                inventory[entry.name] = {
                    "name": entry.name,
                    "runner": settings.runner,
                    "idempotent": settings.idempotent,
                }
        return inventory

    def register(self) -> bool:
        """Register (again) when the inventory changed; True when registered now."""
        with self._register_lock:
            inventory = self.scan_inventory()
            if self.agent_id is not None and inventory == self._inventory:
                return False
            answer = self.client.register(
                self.config.site, self.capabilities(), list(inventory.values())
            )
            self.agent_id = answer["agent_id"]
            self._inventory = inventory
            lease = float(answer.get("lease_seconds") or 180)
            self.heartbeat_seconds = max(lease / 3, 1.0)
            self._warn_about_roles(answer.get("roles"))
        logger.info(
            "%s registered as site %s with %d function(s)",
            self.agent_id,
            self.config.site,
            len(inventory),
        )
        return True

    def _warn_about_roles(self, roles: list[str] | None) -> None:
        if self.config.deploy.enabled and roles is not None and "GET_Code" not in roles:
            logger.error(
                "%s deployments are enabled but the token lacks GET_Code: no "
                "uploaded code will be offered to this agent",
                self.agent_id,
            )

    # -- one step each -------------------------------------------------------

    def recover(self) -> int:
        """Resume what the journal holds (see the module doc); how many calls."""
        entries = list(self.journal.entries())
        # Before this process claims anything: all it holds is in the journal.
        released = self.heartbeat_step(force=True, complete=True)
        resumed = 0
        for entry in entries:
            call_id = entry["call_id"]
            if call_id in released:
                self._abandon(entry)
            elif entry["phase"] in ("claimed", "started", "submitting"):
                self._start(call_id)
                resumed += 1
        logger.info("recovered %d journaled call(s), resumed %d", len(entries), resumed)
        self.flush_reports_step()
        return len(entries)

    def claim_step(self, wait: float) -> int:
        """Claim as many calls as there are free slots and start them."""
        self.register()
        free = self._wait_for_free_slot(wait)
        if free == 0:
            return 0
        chain = self.config.slurm.chain_handoff
        options = {"chain": chain}
        if self.config.deploy.enabled:
            options["deploy"] = True
        calls = self.client.claim(self.agent_id, free, wait, **options)
        cancel.stop_cancelled(self, getattr(self.client, "last_cancel", []))
        for offer in getattr(self.client, "last_deploy", []):
            self._start_deployment(offer)
        for call in calls:
            self._accept(call)
        return len(calls)

    def poll_batch_step(self) -> int:
        """One scheduler query per batch system for every tracked job."""
        tracked = [e for e in self.journal.entries() if e["phase"] == "submitted"]
        finished = 0
        for runner, backend in BACKENDS.items():
            mine = [e for e in tracked if e["runner"] == runner]
            if mine:
                finished += self._poll(backend, mine)
        return finished

    def flush_reports_step(self) -> int:
        """Send again the final reports the server has not acknowledged."""
        sent = 0
        for entry in self.journal.entries():
            if entry["phase"] != "reporting":
                continue
            if not self._deliver(entry["call_id"], entry["report"]):
                break  # the server is unavailable; the next cycle tries again
            sent += 1
        return sent

    def heartbeat_step(self, force: bool = False, complete: bool = False) -> set[str]:
        """Renew the leases of every journaled call; the calls released."""
        if self.agent_id is None:
            return set()
        if (
            not force
            and time.monotonic() - self._last_heartbeat < self.heartbeat_seconds
        ):
            return set()
        held = [e["call_id"] for e in self.journal.entries()]
        answer = self.client.heartbeat(self.agent_id, held, complete)
        self._last_heartbeat = time.monotonic()
        released = set(answer.get("released", []))
        for call_id in sorted(released):
            logger.warning("%s is no longer leased to this agent", call_id)
        return released

    # -- loops -----------------------------------------------------------------

    def run_forever(self) -> None:
        tracker = threading.Thread(target=self._track_loop, name="tracker", daemon=True)
        attempt = 0
        while not self.stop.is_set():
            try:
                if not tracker.is_alive():
                    self.register()
                    self.recover()
                    tracker.start()
                self.claim_step(self.config.claim_wait_seconds)
                attempt = 0
            except ServerUnavailable as exc:
                attempt += 1
                delay = backoff(attempt)
                logger.error("server unavailable (%s); retrying in %.1f s", exc, delay)
                self.stop.wait(delay)
        logger.info("stopping: letting running calls finish")
        self._pool.shutdown(wait=True)
        self._deployer.shutdown(wait=True)
        # Batch jobs keep running; the journal re-attaches them at the next start.
        if tracker.is_alive():
            tracker.join(timeout=self.config.poll_seconds + 5)
        self._try(self.flush_reports_step)

    def run_once(self) -> int:
        """Serve all work that is ready now, wait for it to finish, then return."""
        self.register()
        self.recover()
        served = 0
        while not self.stop.is_set():
            claimed = self.claim_step(0)
            served += claimed
            if claimed == 0 and self._busy == 0:
                break
            if claimed == 0:
                with self._busy_changed:
                    self._busy_changed.wait(0.2)
        self._pool.shutdown(wait=True)
        self._deployer.shutdown(wait=True)
        while self._holds_work() and not self.stop.is_set():
            self.poll_batch_step()
            self._try(self.flush_reports_step)
            self._try(self.heartbeat_step)
            self.stop.wait(self.config.poll_seconds)
        return served

    def _holds_work(self) -> bool:
        return any(True for _ in self.journal.entries())

    def _track_loop(self) -> None:
        # Besides batch jobs and reports, this loop notices functions added to
        # or removed from the folder while the main loop is held in a long-poll.
        while not self.stop.is_set():
            self.poll_batch_step()
            self._try(self.flush_reports_step)
            self._try(self._heartbeat_and_release)
            self._try(self.register)
            self.stop.wait(self.config.poll_seconds)

    def _heartbeat_and_release(self) -> None:
        released = self.heartbeat_step()
        for entry in self.journal.entries():
            if entry["call_id"] in released and entry["phase"] == "submitted":
                self._abandon(entry)

    def _try(self, step) -> Any:
        try:
            return step()
        except (ServerUnavailable, Refused) as exc:
            logger.error("%s failed: %s", getattr(step, "__name__", "step"), exc)
            return None

    # -- calls -------------------------------------------------------------------

    def _accept(self, call: dict[str, Any]) -> None:
        settings = self.config.function_settings(call["function"])
        offered = self._inventory.get(call["function"], {})
        self.journal.record(
            call["id"],
            "claimed",
            call=call,
            runner=offered.get("runner") or settings.runner,
            idempotent=bool(offered.get("idempotent", settings.idempotent)),
            order=time.time_ns(),
        )
        self._start(call["id"])

    def _wait_for_free_slot(self, wait: float) -> int:
        with self._busy_changed:
            if self._busy >= self.config.max_parallel:
                self._busy_changed.wait(wait if wait > 0 else 0.01)
            return max(self.config.max_parallel - self._busy, 0)

    def _start(self, call_id: str) -> None:
        with self._busy_changed:
            if call_id in self._active:
                return
            self._active.add(call_id)
            self._busy += 1
        self._pool.submit(self._execute, call_id)

    def _execute(self, call_id: str) -> None:
        try:
            self._advance(call_id)
        except Exception as exc:
            logger.error("%s failed inside the agent: %s", call_id, exc)
            logger.debug("%s traceback", call_id, exc_info=True)
            self._finish(call_id, _failed(f"the agent failed to run the call: {exc}"))
        finally:
            with self._busy_changed:
                self._active.discard(call_id)
                self._busy -= 1
                self._busy_changed.notify_all()

    def _advance(self, call_id: str) -> None:
        entry = self.journal.get(call_id)
        if entry is None:
            return
        if entry["phase"] == "started":
            self._interrupted(entry)
        elif entry["phase"] == "submitting":
            self._submit_batch(entry, resume=True)
        elif entry["phase"] == "claimed":
            self._begin(entry)

    def _begin(self, entry: dict[str, Any]) -> None:
        call_id, call = entry["call_id"], entry["call"]
        try:
            prepared = runners.prepare(self.config, call)
        except runners.RunError as exc:
            logger.error("%s cannot start: %s", call_id, exc)
            self._finish(call_id, _failed(str(exc)))
            return
        if not self._approved(call_id, call, prepared):
            return
        runner = entry["runner"]
        if runner == "pbs" or (runner == "slurm" and call["mode"] == "async"):
            self._submit_batch(entry, prepared=prepared)
        else:
            self._run_process(call_id, prepared, runner)

    def _approved(
        self, call_id: str, call: dict[str, Any], prepared: runners.Prepared
    ) -> bool:
        """Whether the call may run; when not, it is finished (or left to resume)."""
        settings = self.config.consent
        if not consent.needed(settings, self.config.functions_dir, call["function"]):
            return True
        # The resolved file is what gets hashed and run: a deployment swapping
        # the function's symlink meanwhile cannot slip in unapproved bytes.
        executable = prepared.executable.resolve()
        prepared.argv[0] = str(executable)
        try:
            consent.obtain(
                self.client,
                self.agent_id,
                self.config.site,
                settings.public_key,
                settings,
                purpose="call",
                subject_id=call_id,
                function=call["function"],
                executable=executable,
                arguments_sha256=approval.call_arguments_sha256(call),
                stop=self.stop,
            )
        except approval.NotApproved as exc:
            if self.stop.is_set():
                return False  # still `claimed`: the next start asks again
            logger.error("%s not approved: %s", call_id, exc.reason)
            self._finish(call_id, _failed(f"not approved: {exc.reason}"))
            return False
        # A submission resumed after a restart prepares the call again; it
        # must submit this very file, unchanged (see _resubmittable).
        self.journal.record(
            call_id,
            "claimed",
            approved_executable=str(executable),
            approved_sha256=approval.file_sha256(executable),
        )
        return True

    def _resubmittable(
        self, entry: dict[str, Any], prepared: runners.Prepared
    ) -> runners.Prepared:
        """The call prepared again after a restart, running what was approved."""
        approved = entry.get("approved_executable")
        if approved is None:
            return prepared
        try:
            now = approval.file_sha256(Path(approved))
        except OSError as exc:
            raise approval.NotApproved(f"the approved executable is gone: {exc}")
        if now != entry.get("approved_sha256"):
            raise approval.NotApproved(
                "the approved executable changed before the call was submitted"
            )
        prepared.argv[0] = approved
        return prepared

    def _run_process(
        self, call_id: str, prepared: runners.Prepared, runner: str
    ) -> None:
        self.journal.record(call_id, "started")

        def started(pid: int) -> None:
            self.journal.record(call_id, "started", pid=pid)

        def running() -> None:
            self._tell(call_id, {"state": "running"})

        run = runners.run_srun if runner == "slurm" else runners.run_local
        outcome = run(prepared, self.config, running, started)
        logger.info("%s %s (exit %s)", call_id, outcome.state, outcome.exit_code)
        self._finish(call_id, outcome.report())

    def _interrupted(self, entry: dict[str, Any]) -> None:
        call_id = entry["call_id"]
        if entry.get("pid") and runners.kill_orphan(entry["pid"], call_id):
            logger.warning("%s killed the process a stopped agent left", call_id)
        if entry.get("idempotent"):
            logger.warning("%s was interrupted; running it again (idempotent)", call_id)
            self._begin(self.journal.record(call_id, "claimed"))
            return
        logger.warning(
            "%s was interrupted; not idempotent, reporting it failed", call_id
        )
        self._finish(
            call_id,
            _failed(
                "the agent stopped while the function ran; it was not run again "
                "because the function is not declared idempotent"
            ),
        )

    # -- deployments of uploaded code ------------------------------------------------

    def _start_deployment(self, offer: dict[str, Any]) -> None:
        if offer["id"] in self._deploying:
            return
        self._deploying.add(offer["id"])
        self._deployer.submit(self._deploy, offer)

    def _deploy(self, offer: dict[str, Any]) -> None:
        """Download, check, unpack, prepare and install one approved upload.

        Not journaled: a deployment interrupted by a crash is offered again to
        the next agent process, and installing is idempotent (deploy.install).
        """
        deployment_id = offer["id"]
        folder = self.config.state_dir / "downloads"
        folder.mkdir(mode=0o700, exist_ok=True)
        archive = folder / f"{deployment_id}.archive"
        try:
            for attempt in range(1, DEPLOY_ATTEMPTS + 1):
                try:
                    self._deploy_once(offer, archive)
                    break
                except ServerUnavailable as exc:
                    # The server offers it to this process only once: retry
                    # here. Installing again is idempotent (deploy.install).
                    logger.error("%s deployment interrupted: %s", deployment_id, exc)
                    if attempt == DEPLOY_ATTEMPTS or self.stop.wait(backoff(attempt)):
                        break
        except Refused as exc:
            logger.error("%s deployment refused by the server: %s", deployment_id, exc)
        except Exception as exc:
            logger.error(
                "%s deployment failed inside the agent: %s", deployment_id, exc
            )
            logger.debug("%s traceback", deployment_id, exc_info=True)
        finally:
            archive.unlink(missing_ok=True)
            self._deploying.discard(deployment_id)

    def _deploy_once(self, offer: dict[str, Any], archive: Path) -> None:
        result = self._download_and_install(offer, archive)
        if self.stop.is_set() and result.state == "failed":
            return  # stopped while waiting: offered again at the next start
        logger.info(
            "%s deployment of %s: %s %s",
            offer["id"],
            offer["function"],
            result.state,
            result.reason,
        )
        if result.state == "deployed":
            # Offered before it is reported: "deployed" means callable.
            self.register()
        report = result.report()
        report["reason"] = report["reason"][:2000]  # the server's limit
        self.client.deployment_report(self.agent_id, offer["id"], report)

    def _download_and_install(
        self, offer: dict[str, Any], archive: Path
    ) -> deploy.Result:
        limit = min(int(offer["size"]), self.config.deploy.max_bytes)
        try:
            self.client.deployment_download(
                self.agent_id, offer["id"], archive, max_bytes=limit
            )
        except Refused as exc:
            return deploy.Result("failed", f"download refused: {exc.detail}", "")
        approve = None
        if self.config.consent.mode != "off":

            def approve(executable, arguments) -> None:
                try:
                    self._ask_to_prepare(offer, executable, arguments)
                except approval.NotApproved as exc:
                    raise deploy.NotApproved(exc.reason)

        return deploy.install(self.config, offer, archive, approve)

    def _ask_to_prepare(self, offer, executable, arguments) -> None:
        consent.obtain(
            self.client,
            self.agent_id,
            self.config.site,
            self.config.consent.public_key,
            self.config.consent,
            purpose="prepare",
            subject_id=offer["id"],
            function=offer["function"],
            executable=executable,
            arguments_sha256=approval.prepare_arguments_sha256(
                arguments["archive_sha256"], arguments["prepare"]
            ),
            stop=self.stop,
        )

    # -- batch jobs ----------------------------------------------------------------

    def _submit_batch(
        self,
        entry: dict[str, Any],
        prepared: runners.Prepared | None = None,
        resume: bool = False,
    ) -> None:
        call_id, backend = entry["call_id"], BACKENDS[entry["runner"]]
        name = runners.job_name(call_id)
        self.journal.record(call_id, "submitting", job_name=name)
        attempt = 0
        while not self.stop.is_set():
            try:
                job_id = self._submit_once(entry, backend, prepared, resume)
                break
            except approval.NotApproved as exc:
                logger.error("%s not submitted: %s", call_id, exc.reason)
                self._finish(call_id, _failed(f"not approved: {exc.reason}"))
                return
            except (runners.RunError, TimeoutError) as exc:
                if not resume:
                    logger.error("%s not submitted: %s", call_id, exc)
                    self._finish(call_id, _failed(str(exc)))
                    return
                # Resuming, the job may exist: never guess, ask again later.
                attempt += 1
                logger.error("%s cannot tell if it was submitted: %s", call_id, exc)
                self.stop.wait(backoff(attempt, cap=30.0))
        else:
            return  # stopping; the journal resumes the submission next time
        self.journal.record(call_id, "submitted", batch_job_id=job_id)
        self._remember_batch_id(call_id, job_id)
        self._tell(call_id, {"state": "running", "batch_job_id": job_id})

    def _submit_once(
        self,
        entry: dict[str, Any],
        backend: Any,
        prepared: runners.Prepared | None,
        resume: bool,
    ) -> str:
        call_id, name = entry["call_id"], runners.job_name(entry["call_id"])
        with self.journal.submission_lock(call_id, LOCK_WAIT) as fd:
            if resume:
                found = backend.find(name, self.config)
                if found is not None:
                    logger.warning("%s attached to batch job %s", call_id, found)
                    return found
            if prepared is None:
                prepared = self._resubmittable(
                    entry, runners.prepare(self.config, entry["call"])
                )
            options = {}
            if entry["call"].get("after"):
                options["after"] = self._dependencies(entry["call"]["after"])
            job_id = backend.submit(prepared, self.config, keep_fds=(fd,), **options)
        logger.info("%s submitted as batch job %s", call_id, job_id)
        return job_id

    def _dependencies(self, after: list[str]) -> list[str]:
        """The batch job ids of the calls in `after`, once all have one.

        The predecessors were accepted first and are being submitted by other
        workers; this waits for them, at most LOCK_WAIT seconds. A predecessor
        that ended already is still named: the batch system remembers it for a
        while and decides from its end whether this job runs.
        """
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            found, missing = {}, []
            for call_id in after:
                job_id, waiting = self._batch_id(call_id)
                if job_id:
                    found[call_id] = job_id
                elif waiting:
                    missing.append(call_id)
                else:
                    raise runners.RunError(
                        f"the call {call_id} it runs after has no batch job here"
                    )
            if not missing:
                return [found[c] for c in after]
            if time.monotonic() > deadline or self.stop.wait(0.05):
                raise TimeoutError(
                    f"the calls {missing} it runs after are not submitted"
                )

    def _batch_id(self, call_id: str) -> tuple[str | None, bool]:
        """A call's batch job id, and whether one may still come."""
        # TODO: a restarted agent whose predecessor record is already gone
        # cannot name its job, and fails the dependent; the server could carry
        # predecessors' batch job ids in the lease instead.
        if call_id in self._batch_ids:
            return self._batch_ids[call_id], False
        entry = self.journal.get(call_id)
        if entry is None:
            return None, False
        if entry.get("batch_job_id"):
            return entry["batch_job_id"], False
        return None, entry["phase"] in ("claimed", "submitting")

    def _remember_batch_id(self, call_id: str, job_id: str) -> None:
        self._batch_ids[call_id] = job_id
        while len(self._batch_ids) > 10_000:
            self._batch_ids.pop(next(iter(self._batch_ids)))

    def _poll(self, backend: Any, entries: list[dict[str, Any]]) -> int:
        jobs = {e["batch_job_id"]: e["job_name"] for e in entries}
        try:
            states = backend.query(jobs, self.config)
        except runners.RunError as exc:
            # A failing query says nothing about the jobs: try again next cycle.
            logger.error("batch query failed, jobs stay tracked: %s", exc)
            return 0
        finished = 0
        for entry in entries:
            state = states.get(entry["batch_job_id"])
            if state is not None and state.terminal:
                self._doubt.pop(entry["call_id"], None)
                self._finish_batch(entry, state)
                finished += 1
            elif state is not None and state.kind == batch.ACTIVE:
                self._doubt.pop(entry["call_id"], None)
            else:
                finished += self._in_doubt(entry, state)
        return finished

    def _in_doubt(self, entry: dict[str, Any], state: batch.BatchState | None) -> int:
        """A job not visible (yet: accounting lags) or in an unknown state gets a
        grace period before its call is reported lost."""
        call_id = entry["call_id"]
        since = self._doubt.setdefault(call_id, time.monotonic())
        if time.monotonic() - since < self.config.batch_grace_seconds:
            return 0
        self._doubt.pop(call_id, None)
        job_id = entry["batch_job_id"]
        reason = (
            f"batch job {job_id}: {state.reason()}"
            if state is not None
            else f"batch job {job_id} is not known to the batch system any more"
        )
        logger.error("%s %s", call_id, reason)
        report = {"state": "lost", "reason": reason, "batch_job_id": job_id}
        self._finish(call_id, report)
        return 1

    def _finish_batch(self, entry: dict[str, Any], state: batch.BatchState) -> None:
        call_id, job_id = entry["call_id"], entry["batch_job_id"]
        prepared = runners.outputs_of(self.config, call_id)
        stdout, truncated, stderr = runners.read_outputs(prepared, self.config)
        outcome = runners.Outcome(
            "succeeded" if state.succeeded else "failed",
            state.exit_code,
            state.reason(),
            stdout,
            truncated,
            stderr,
        )
        logger.info("%s batch job %s ended %s", call_id, job_id, state.state)
        self._finish(call_id, dict(outcome.report(), batch_job_id=job_id))

    def _abandon(self, entry: dict[str, Any]) -> None:
        """The server no longer leases the call to us: stop whatever runs it."""
        call_id = entry["call_id"]
        if entry.get("pid"):
            runners.kill_orphan(entry["pid"], call_id)
        if entry.get("batch_job_id"):
            backend = BACKENDS[entry["runner"]]
            try:
                backend.cancel(entry["batch_job_id"], self.config)
            except runners.RunError as exc:
                logger.error("%s batch job not cancelled: %s", call_id, exc)
        # TODO: a call released while `submitting` may still get a batch job
        # from an orphaned submission; finding and cancelling it needs the
        # submission lock and a scheduler query, not worth it for a rare case.
        logger.warning("%s abandoned (phase %s)", call_id, entry["phase"])
        self._forget(call_id)

    # -- reports -------------------------------------------------------------------

    def _finish(self, call_id: str, report: dict[str, Any]) -> None:
        """Journal the final report, then try to deliver it once now."""
        self.journal.record(call_id, "reporting", report=report)
        self._deliver(call_id, report)

    def _deliver(self, call_id: str, report: dict[str, Any]) -> bool:
        """False when the server is unavailable; the report stays journaled."""
        if self.agent_id is None:
            return False
        try:
            self.client.report(self.agent_id, call_id, report)
        except Refused as exc:
            logger.info("%s report %s refused: %s", call_id, report["state"], exc)
            if exc.status == 400 and report["state"] != "running":
                # The result itself was refused (too large, malformed): end the
                # call with the reason rather than leave it waiting for a lease.
                self._tell(
                    call_id,
                    _failed(f"the server refused the result: {exc.detail}"[:2000]),
                )
        except ServerUnavailable as exc:
            logger.error("%s report not delivered yet: %s", call_id, exc)
            return False
        self._forget(call_id)
        return True

    def _tell(self, call_id: str, report: dict[str, Any]) -> None:
        """A progress report (`running`): useful, not worth a retry."""
        try:
            self.client.report(self.agent_id, call_id, report)
        except (Refused, ServerUnavailable) as exc:
            logger.info("%s progress report not delivered: %s", call_id, exc)

    def _forget(self, call_id: str) -> None:
        self.journal.forget(call_id)
        shutil.rmtree(runners.workdir(self.config, call_id), ignore_errors=True)


def _failed(reason: str) -> dict[str, Any]:
    return runners.Outcome("failed", None, reason).report()
