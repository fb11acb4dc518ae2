"""`hpcsera`: the command line on top of the SDK.

Exit codes (also in the README):
  0  success
  1  the function ran and failed (or the call was lost or cancelled)
  2  bad usage or bad local input (arguments, files, configuration)
  3  the server refused the request (4xx: token, role, unknown object, input)
  4  the server could not be reached or failed (connection, 5xx)
  5  the call (or upload) had not finished when the CLI stopped waiting
  6  the code upload was denied by the user or expired unapproved
  7  an agent failed to deploy the approved code
  8  the server received other bytes than were sent (do not approve them)
  130 interrupted
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from hpcsera_client import __version__
from hpcsera_client.client import CallStatus, Client
from hpcsera_client.config import ConfigError, Settings, resolve, save
from hpcsera_client.errors import (
    ApiError,
    CallTimeout,
    DeploymentFailed,
    DigestMismatch,
    FunctionFailed,
    HpcseraError,
    ServerError,
    TransportError,
    UploadRejected,
    UploadTimeout,
)
from hpcsera_client.login import LoginError, LoginUnavailable, request_token
from hpcsera_client.pack import PackError, pack_directory
from hpcsera_client.progress import watch_call, watch_job

OK, FAILED, USAGE, REFUSED, UNAVAILABLE, NOT_FINISHED = 0, 1, 2, 3, 4, 5
REJECTED, NOT_DEPLOYED, TAMPERED = 6, 7, 8
INTERRUPTED = 130


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, like every other error of the CLI, instead of the usage.
        self.exit(USAGE, f"hpcsera: error: {message} (see {self.prog} --help)\n")


def _client(args: argparse.Namespace) -> Client:
    settings = resolve(args.server, args.token_file)
    return Client(settings.server, settings.token, timeout=args.http_timeout)


def _print_result(result: Any) -> None:
    if isinstance(result, str):
        sys.stdout.write(result)
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))


def _parse_args(pairs: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {pair!r} is not key=value")
        if key in parsed:
            raise UsageError(f"argument {key!r} is given twice")
        parsed[key] = value
    return parsed


def _read_input(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}")
    try:
        json.loads(text)
    except ValueError:
        raise UsageError(f"{name} is not JSON (the input of a function is JSON)")
    return text


def cmd_call(args: argparse.Namespace) -> int:
    options = {
        "input": _read_input(args.input),
        "site": args.site,
        "time_limit": args.time_limit,
    }
    fn_args = _parse_args(args.args)
    client = _client(args)
    if args.async_:
        handle = client.submit(args.function, fn_args, **options)
        print(json.dumps({"call_id": handle.id, "job_id": handle.job_id}))
        return OK
    _print_result(client.call(args.function, fn_args, timeout=args.timeout, **options))
    return OK


def _status_line(status: CallStatus) -> str:
    parts = [status.id, status.function, status.state]
    if status.exit_code is not None:
        parts.append(f"exit {status.exit_code}")
    if status.batch_job_id:
        parts.append(f"batch {status.batch_job_id}")
    if status.reason:
        parts.append(status.reason)
    return "  ".join(parts)


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).call_status(args.call_id)
    print(json.dumps(status.raw, indent=2) if args.json else _status_line(status))
    return OK if status.state != "failed" else FAILED


def cmd_output(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.wait:
        status = client.get_call(args.call_id).wait(args.timeout)
    else:
        status = client.call_status(args.call_id)
    if not status.done:
        raise CallTimeout(f"call {status.id} is still {status.state}", status.id)
    sys.stdout.write(status.stdout)
    status.raise_for_state()
    return OK


def cmd_watch(args: argparse.Namespace) -> int:
    client = _client(args)
    out = sys.stdout
    if args.job:
        states = watch_job(client, args.id, out, timeout=args.timeout)
        return OK if all(s == "succeeded" for s in states) else FAILED
    status = watch_call(client, args.id, out, timeout=args.timeout)
    return OK if status.succeeded else FAILED


def cmd_jobs(args: argparse.Namespace) -> int:
    for job in _client(args).jobs(limit=args.limit):
        names = ",".join(c["function"] for c in job["calls"])
        print(f"{job['id']}  {job['state']:<9}  {job['created_at']}  {names}")
    return OK


def cmd_whoami(args: argparse.Namespace) -> int:
    token = _client(args).capabilities()["token"]
    print(f"{token['user']}  tag {token['tag']}  roles {','.join(token['roles'])}")
    return OK


def cmd_capabilities(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).capabilities(), indent=2))
    return OK


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        job = client.submit_job(args.jobfile)
    except OSError as exc:
        raise UsageError(f"cannot read {args.jobfile}: {exc.strerror}")
    if not args.watch:
        calls = {status.name or status.function: status.id for status in job.calls()}
        print(json.dumps({"job_id": job.id, "calls": calls}))
        return OK
    states = watch_job(client, job.id, sys.stdout, timeout=args.timeout)
    return OK if all(s == "succeeded" for s in states) else FAILED


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel_job(args.job_id)
    ended = sum(1 for c in job["calls"] if c["state"] == "cancelled")
    print(f"job {job['id']}  {job['state']}  {ended}/{len(job['calls'])} cancelled")
    return OK


def _code_file(name: str, what: str) -> bytes:
    path = Path(name)
    try:
        if path.is_dir():
            if what != "archive":
                raise UsageError(f"--script {name} is a directory; give one file")
            return pack_directory(path)
        return path.read_bytes()
    except PackError as exc:
        raise UsageError(f"cannot pack {name}: {exc}")
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}")


def _upload_progress(answer: dict) -> None:
    states = [f"{d['site']} {d['state']}" for d in answer.get("deployments") or []]
    shown = f" ({', '.join(states)})" if states else ""
    print(f"upload {answer['id']}: {answer['state']}{shown}", file=sys.stderr)


def cmd_code_upload(args: argparse.Namespace) -> int:
    if args.archive and not args.prepare:
        raise UsageError("--archive needs --prepare (its preparation executable)")
    if args.script and args.prepare:
        raise UsageError("--prepare goes with --archive; a script has none")
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait approved|deployed")
    archive = _code_file(args.archive, "archive") if args.archive else None
    script = _code_file(args.script, "script") if args.script else None
    upload = _client(args).code_upload(
        args.function,
        archive=archive,
        prepare=args.prepare or "",
        script=script,
        commit=args.commit,
        description=args.description,
        site=args.site,
    )
    # The user approves only when this matches the digest the web UI shows.
    print(
        f"SHA-256 {upload.sha256}: approve it at {upload.consent_url}",
        file=sys.stderr,
        flush=True,
    )
    answer = upload.last
    if args.wait == "approved":
        answer = upload.wait_approved(args.timeout, on_change=_upload_progress)
    elif args.wait == "deployed":
        sites = [args.site] if args.site else None
        answer = upload.wait_deployed(args.timeout, sites, on_change=_upload_progress)
    print(json.dumps(answer, indent=2))
    return OK


def cmd_code_status(args: argparse.Namespace) -> int:
    answer = _client(args).code_status(args.upload_id)
    print(json.dumps(answer, indent=2))
    return REJECTED if answer["state"] in ("denied", "expired") else OK


def _code_commands(commands: argparse._SubParsersAction) -> None:
    code = commands.add_parser(
        "code", help="upload a function's code for consent and deployment"
    )
    actions = code.add_subparsers(dest="code_command", required=True)
    upload = actions.add_parser(
        "upload",
        help="upload code (POST_Code); it runs nowhere before you approve it",
    )
    upload.add_argument("function")
    given = upload.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--archive", help="tar.gz or zip; a directory is packed as tar.gz here"
    )
    given.add_argument("--script", help="a single file that becomes the function")
    upload.add_argument("--prepare", help="preparation executable inside the archive")
    upload.add_argument("--commit", default="", help="the commit it was built from")
    upload.add_argument("--description", default="", help="one line, shown to you")
    upload.add_argument("--site", default="", help="deploy on this site only")
    upload.add_argument(
        "--wait",
        choices=["approved", "deployed"],
        help="wait for your approval, or for the deployment too",
    )
    upload.add_argument("--timeout", type=float, help="stop waiting after seconds")
    upload.set_defaults(run=cmd_code_upload)

    status = actions.add_parser("status", help="state and deployments of an upload")
    status.add_argument("upload_id")
    status.set_defaults(run=cmd_code_status)


def _token_by_approval(args: argparse.Namespace) -> str:
    def show(code: str) -> None:
        print(
            f"Approve this request in the HPCSerA web UI (Requests); it shows "
            f"the code: {code}",
            flush=True,
        )

    if not (args.key and args.user and args.roles):
        raise UsageError("login with --client-id needs --key, --user and --roles")
    try:
        grant = request_token(
            args.server,
            args.client_id,
            args.key,
            args.user,
            args.roles,
            tag=args.tag,
            on_code=show,
            timeout=args.http_timeout,
        )
    except OSError as exc:
        raise UsageError(f"cannot read the key {args.key}: {exc.strerror}")
    except ValueError as exc:  # cryptography: not a PEM private key
        raise UsageError(f"{args.key} is not a usable private key: {exc}")
    return grant.token


def cmd_login(args: argparse.Namespace) -> int:
    """Get a token and store it (0600) for later commands.

    With --client-id: the decoupled login. The registered client asks with
    its private key, the user approves in the web UI, the CLI polls. Without:
    a token the user made in the web UI, read from stdin, never argv.
    """
    if not args.server:
        raise UsageError("login needs --server URL")
    if args.client_id:
        token = _token_by_approval(args)
    else:
        token = sys.stdin.readline().strip()
        if not token:
            raise UsageError("login reads the token from stdin; none was given")
    client = Client(args.server, token, timeout=args.http_timeout)
    who = client.capabilities()["token"]
    path = save(Settings(server=client.url, token=token))
    print(f"logged in to {client.url} as {who['user']} (tag {who['tag']}); {path}")
    return OK


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hpcsera",
        description="Call functions on HPC clusters through an HPCSerA server.",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--server", help="server URL (else $HPCSERA_SERVER)")
    parser.add_argument("--token-file", help="file holding the token")
    parser.add_argument("--http-timeout", type=float, default=30.0)
    commands = parser.add_subparsers(dest="command", required=True)

    call = commands.add_parser("call", help="call a function and print its result")
    call.add_argument("function")
    call.add_argument("args", nargs="*", metavar="key=value")
    call.add_argument("--input", help="JSON file handed to the function; - is stdin")
    call.add_argument("--site", help="run on this site")
    call.add_argument("--time-limit", type=int, help="wall-clock limit, seconds")
    call.add_argument(
        "--timeout",
        type=float,
        help="stop waiting after seconds (checked once the server's own wait "
        "limit has passed)",
    )
    call.add_argument(
        "--async", dest="async_", action="store_true", help="print ids, do not wait"
    )
    call.set_defaults(run=cmd_call)

    status = commands.add_parser("status", help="state of a call")
    status.add_argument("call_id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    output = commands.add_parser("output", help="stdout of a finished call")
    output.add_argument("call_id")
    output.add_argument("--wait", action="store_true", help="wait for it to finish")
    output.add_argument("--timeout", type=float)
    output.set_defaults(run=cmd_output)

    watch = commands.add_parser("watch", help="follow a call (or --job) live")
    watch.add_argument("id")
    watch.add_argument("--job", action="store_true", help="the id is a job's")
    watch.add_argument("--timeout", type=float)
    watch.set_defaults(run=cmd_watch)

    jobs = commands.add_parser("jobs", help="recent jobs")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(run=cmd_jobs)

    commands.add_parser("whoami", help="the token's user, tag, roles").set_defaults(
        run=cmd_whoami
    )
    commands.add_parser(
        "capabilities", help="server version, roles, limits"
    ).set_defaults(run=cmd_capabilities)

    submit = commands.add_parser("submit", help="submit a job document (YAML/JSON)")
    submit.add_argument("jobfile")
    submit.add_argument("--watch", action="store_true", help="follow it live")
    submit.add_argument("--timeout", type=float, help="stop watching after seconds")
    submit.set_defaults(run=cmd_submit)

    cancel = commands.add_parser("cancel", help="cancel a job's unfinished calls")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=cmd_cancel)

    login = commands.add_parser(
        "login",
        help="get a token by approval (--client-id) or from stdin, and store it",
    )
    login.add_argument("--client-id", help="the client registered in the web UI")
    login.add_argument("--key", help="the client's private key (PEM)")
    login.add_argument("--user", help="the user who approves")
    login.add_argument("--roles", help='roles asked for, e.g. "POST_Job GET_JobStatus"')
    login.add_argument("--tag", default="default")
    login.set_defaults(run=cmd_login)

    _code_commands(commands)
    # TODO: `tokens list` waits for a token listing API on the server
    # (capabilities feature `token_listing`); it is left out rather than faked.
    return parser


def _exit_code(error: HpcseraError) -> int:
    if isinstance(error, LoginUnavailable):
        return USAGE
    if isinstance(error, LoginError):
        return REFUSED
    if isinstance(error, FunctionFailed):
        return FAILED
    if isinstance(error, (CallTimeout, UploadTimeout)):
        return NOT_FINISHED
    if isinstance(error, UploadRejected):
        return REJECTED
    if isinstance(error, DeploymentFailed):
        return NOT_DEPLOYED
    if isinstance(error, DigestMismatch):
        return TAMPERED
    if isinstance(error, (TransportError, ServerError)):
        return UNAVAILABLE
    if isinstance(error, ApiError):
        return REFUSED
    return UNAVAILABLE


def _fail(message: str, code: int) -> int:
    print(f"hpcsera: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (UsageError, ConfigError) as exc:
        return _fail(str(exc), USAGE)
    except FunctionFailed as exc:
        tail = exc.stderr_tail.strip().splitlines()
        where = f" (exit {exc.exit_code})" if exc.exit_code is not None else ""
        last = f": {tail[-1]}" if tail else ""
        return _fail(f"function_failed{where}: {exc.detail}{last}", FAILED)
    except DeploymentFailed as exc:
        tail = exc.log_tail.strip().splitlines()
        last = f" (log: {tail[-1]})" if tail else ""
        return _fail(f"{exc}{last}", NOT_DEPLOYED)
    except HpcseraError as exc:
        return _fail(str(exc), _exit_code(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", INTERRUPTED)
