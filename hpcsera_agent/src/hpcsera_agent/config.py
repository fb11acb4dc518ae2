"""The agent's one configuration object, read from TOML and checked at start."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older cluster Pythons
    import tomli as tomllib

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from hpcsera_agent.approval import PasskeyPin

FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RP_ID = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
ENV_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
RUNNERS = ("local", "slurm", "pbs")
CONSENT_MODES = ("off", "uploaded", "all")
CONSENT_VERIFY = ("server", "passkey")
DEFAULT_CONFIG = "~/.config/hpcsera/agent.toml"


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class FunctionSettings:
    runner: str = "local"
    idempotent: bool = False


@dataclass(frozen=True)
class SlurmSettings:
    partition: str = ""
    extra_args: list[str] = field(default_factory=list)
    poll_seconds: float = 2.0
    # Submit chains of batch calls at once, linked with `afterok` (see
    # service.Agent._dependencies); off, each step waits for the server.
    chain_handoff: bool = True
    srun: str = "srun"
    sbatch: str = "sbatch"
    sacct: str = "sacct"
    squeue: str = "squeue"
    scancel: str = "scancel"


@dataclass(frozen=True)
class PbsSettings:
    queue: str = ""
    extra_args: list[str] = field(default_factory=list)
    poll_seconds: float = 2.0
    qsub: str = "qsub"
    qstat: str = "qstat"
    qselect: str = "qselect"
    qdel: str = "qdel"


@dataclass(frozen=True)
class DeploySettings:
    """Installing uploaded code (deploy.py); off unless the owner turns it on."""

    enabled: bool = False
    max_bytes: int = 100 * 1024**2  # bytes actually written while unpacking
    max_entries: int = 10000
    prepare_timeout_seconds: float = 600.0


@dataclass(frozen=True)
class LoginSettings:
    """What `hpcsera-agent login` asks for, as the client the user registered."""

    client_id: str
    key_file: Path
    user: str
    roles: str
    tag: str = "default"


@dataclass(frozen=True)
class ConsentSettings:
    """When a run waits for the user's signed approval (see consent.py)."""

    mode: str = "off"
    public_key_file: Path | None = None
    wait_seconds: float = 600.0
    # Loaded while the config is read, so a bad key stops the agent at start
    # instead of failing every call that needs consent.
    public_key: Ed25519PublicKey | None = field(default=None, repr=False, compare=False)
    # "server": approvals signed with the server's key (public_key_file);
    # "passkey": signed by the user's passkey, pinned with its RP id and origin.
    verify: str = "server"
    passkey_public_key_file: Path | None = None
    rp_id: str = ""
    origin: str = ""
    passkey: PasskeyPin | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Config:
    server: str
    token: str
    site: str
    functions_dir: Path
    state_dir: Path
    arg_mode: str = "env"
    env_prefix: str = "HPCSERA_ARG_"
    default_runner: str = "local"
    max_parallel: int = 4
    claim_wait_seconds: float = 25.0
    max_output_bytes: int = 1024 * 1024
    tail_chars: int = 8192
    functions: dict[str, FunctionSettings] = field(default_factory=dict)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    pbs: PbsSettings = field(default_factory=PbsSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    # How long a batch job may stay invisible to the scheduler's queries (or in
    # a state this agent does not know) before its call is reported lost.
    batch_grace_seconds: float = 300.0
    token_file: Path | None = None
    login: LoginSettings | None = None
    consent: ConsentSettings = field(default_factory=ConsentSettings)

    @property
    def poll_seconds(self) -> float:
        return min(self.slurm.poll_seconds, self.pbs.poll_seconds)

    def function_settings(self, name: str) -> FunctionSettings:
        return self.functions.get(
            name, FunctionSettings(runner=self.default_runner, idempotent=False)
        )


def load(path: str | None, require_token: bool = True) -> Config:
    target = Path(
        os.path.expanduser(
            path or os.environ.get("HPCSERA_AGENT_CONFIG", "") or DEFAULT_CONFIG
        )
    )
    try:
        with open(target, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {target} does not exist")
    except OSError as exc:
        raise ConfigError(f"config file {target} cannot be read: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {target} is not valid TOML: {exc}")
    return parse(raw, base=target.parent, require_token=require_token)


def parse(
    raw: dict[str, Any], base: Path = Path("."), require_token: bool = True
) -> Config:
    known = {
        "server",
        "token",
        "token_file",
        "site",
        "functions_dir",
        "state_dir",
        "arg_mode",
        "env_prefix",
        "default_runner",
        "max_parallel",
        "claim_wait_seconds",
        "max_output_bytes",
        "tail_chars",
        "functions",
        "slurm",
        "pbs",
        "deploy",
        "batch_grace_seconds",
        "login",
        "consent",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")

    server = _string(raw, "server").rstrip("/")
    if not re.fullmatch(r"https?://[^\s]+", server):
        raise ConfigError("server must be an http:// or https:// URL")
    token = _token(raw, base, require_token)
    site = _string(raw, "site", "default")
    if not SITE_NAME.fullmatch(site):
        raise ConfigError("site is 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    arg_mode = _choice(raw, "arg_mode", ("env", "argv"), "env")
    env_prefix = _string(raw, "env_prefix", "HPCSERA_ARG_")
    if not ENV_PREFIX.fullmatch(env_prefix):
        raise ConfigError("env_prefix must be a valid environment variable prefix")
    default_runner = _choice(raw, "default_runner", RUNNERS, "local")

    deploy = _deploy(raw.get("deploy", {}))
    return Config(
        server=server,
        token=token,
        site=site,
        functions_dir=_path(raw, "functions_dir", "~/hpcsera/functions", base),
        state_dir=_path(raw, "state_dir", "~/.local/state/hpcsera-agent", base),
        arg_mode=arg_mode,
        env_prefix=env_prefix,
        default_runner=default_runner,
        max_parallel=_int(raw, "max_parallel", 4, 1, 256),
        claim_wait_seconds=_float(raw, "claim_wait_seconds", 25.0, 0.0, 300.0),
        max_output_bytes=_int(raw, "max_output_bytes", 1024 * 1024, 1, 64 * 1024**2),
        tail_chars=_int(raw, "tail_chars", 8192, 1, 1024 * 1024),
        functions=_functions(raw.get("functions", {}), default_runner),
        slurm=_slurm(raw.get("slurm", {})),
        pbs=_pbs(raw.get("pbs", {})),
        deploy=deploy,
        batch_grace_seconds=_float(raw, "batch_grace_seconds", 300.0, 1.0, 86400.0),
        token_file=_path(raw, "token_file", "", base) if "token_file" in raw else None,
        login=_login(raw.get("login"), base, deploy.enabled),
        consent=_consent(raw.get("consent", {}), base),
    )


def _string(raw: dict[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if value is None:
        raise ConfigError(f"{key} is required")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string")
    return value


def _choice(raw: dict[str, Any], key: str, options: tuple, default: str) -> str:
    value = raw.get(key, default)
    if value not in options:
        raise ConfigError(f"{key} must be one of {', '.join(options)}")
    return value


def _int(raw: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise ConfigError(f"{key} must be a whole number from {low} to {high}")
    return value


def _float(
    raw: dict[str, Any], key: str, default: float, low: float, high: float
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number")
    if not low <= value <= high:
        raise ConfigError(f"{key} must be from {low} to {high}")
    return float(value)


def _path(raw: dict[str, Any], key: str, default: str, base: Path) -> Path:
    value = Path(os.path.expanduser(_string(raw, key, default)))
    return value if value.is_absolute() else (base / value).resolve()


def _token(raw: dict[str, Any], base: Path, required: bool = True) -> str:
    if "token" in raw and "token_file" in raw:
        raise ConfigError("set only one of token and token_file")
    if "token_file" in raw:
        path = _path(raw, "token_file", "", base)
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            if required:
                raise ConfigError(
                    f"token_file {path} does not exist (hpcsera-agent login makes it)"
                )
            token = ""
        except OSError as exc:
            raise ConfigError(f"token_file {path} cannot be read: {exc.strerror}")
    else:
        token = os.environ.get("HPCSERA_TOKEN") or raw.get("token", "")
        if not isinstance(token, str):
            raise ConfigError("token must be a string")
    if not token and required:
        raise ConfigError("a token is required (token, token_file or HPCSERA_TOKEN)")
    if any(c in token for c in "\r\n\t "):
        raise ConfigError("the token contains white space or line breaks")
    return token


def _login(raw: Any, base: Path, deploy: bool = False) -> LoginSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("[login] must be a table")
    unknown = sorted(set(raw) - {"client_id", "key_file", "user", "roles", "tag"})
    if unknown:
        raise ConfigError(f"[login] unknown setting(s): {', '.join(unknown)}")
    return LoginSettings(
        client_id=_string(raw, "client_id"),
        key_file=_path(raw, "key_file", "~/.config/hpcsera/agent.key", base),
        user=_string(raw, "user"),
        # An agent that installs uploaded code also needs to download it.
        roles=_string(
            raw,
            "roles",
            "GET_Job UPDATE_JobStatus" + (" GET_Code" if deploy else ""),
        ),
        tag=_string(raw, "tag", "default"),
    )


def _consent(raw: Any, base: Path) -> ConsentSettings:
    if not isinstance(raw, dict):
        raise ConfigError("[consent] must be a table")
    _known(
        raw,
        "consent",
        {
            "mode",
            "public_key_file",
            "wait_seconds",
            "verify",
            "passkey_public_key_file",
            "rp_id",
            "origin",
        },
    )
    mode = _choice(raw, "mode", CONSENT_MODES, "off")
    wait_seconds = _float(raw, "wait_seconds", 600.0, 1.0, 86400.0)
    verify = _choice(raw, "verify", CONSENT_VERIFY, "server")
    if verify == "passkey":
        return _consent_passkey(raw, base, mode, wait_seconds)
    if "public_key_file" not in raw:
        if mode != "off":
            raise ConfigError(f"[consent] mode {mode} needs public_key_file")
        return ConsentSettings(mode, None, wait_seconds)
    path = _path(raw, "public_key_file", "", base)
    if mode == "off":
        return ConsentSettings(mode, path, wait_seconds)
    # Imported here: only agents with consent on load cryptography at start.
    from hpcsera_agent.approval import load_public_key

    try:
        key = load_public_key(path)
    except ValueError as exc:
        raise ConfigError(f"[consent] public_key_file {exc}")
    return ConsentSettings(mode, path, wait_seconds, key)


def _consent_passkey(
    raw: dict[str, Any], base: Path, mode: str, wait_seconds: float
) -> ConsentSettings:
    for key in ("passkey_public_key_file", "rp_id", "origin"):
        if key not in raw:
            raise ConfigError(f'[consent] verify = "passkey" needs {key}')
    rp_id = _string(raw, "rp_id")
    if not RP_ID.fullmatch(rp_id):
        raise ConfigError("[consent] rp_id must be a host name (no scheme or port)")
    origin = _string(raw, "origin").rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+", origin):
        raise ConfigError("[consent] origin must be scheme://host[:port], no path")
    path = _path(raw, "passkey_public_key_file", "", base)
    from hpcsera_agent.approval import PasskeyPin, load_passkey_key

    try:
        key = load_passkey_key(path)
    except ValueError as exc:
        raise ConfigError(f"[consent] passkey_public_key_file {exc}")
    return ConsentSettings(
        mode,
        None,
        wait_seconds,
        verify="passkey",
        passkey_public_key_file=path,
        rp_id=rp_id,
        origin=origin,
        passkey=PasskeyPin(key, rp_id, origin),
    )


def _functions(raw: Any, default_runner: str) -> dict[str, FunctionSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("[functions] must be a table")
    result = {}
    for name, spec in raw.items():
        if not FUNCTION_NAME.fullmatch(name) or set(name) == {"."}:
            raise ConfigError(f"function name {name!r} is not valid")
        if not isinstance(spec, dict):
            raise ConfigError(f"[functions.{name}] must be a table")
        unknown = sorted(set(spec) - {"runner", "idempotent"})
        if unknown:
            raise ConfigError(
                f"[functions.{name}] unknown setting(s): {', '.join(unknown)}"
            )
        runner = _choice(spec, "runner", RUNNERS, default_runner)
        idempotent = spec.get("idempotent", False)
        if not isinstance(idempotent, bool):
            raise ConfigError(f"[functions.{name}] idempotent must be true or false")
        result[name] = FunctionSettings(runner=runner, idempotent=idempotent)
    return result


def _slurm(raw: Any) -> SlurmSettings:
    if not isinstance(raw, dict):
        raise ConfigError("[slurm] must be a table")
    commands = ("srun", "sbatch", "sacct", "squeue", "scancel")
    known = {"partition", "extra_args", "poll_seconds", "chain_handoff", *commands}
    _known(raw, "slurm", known)
    chain_handoff = raw.get("chain_handoff", True)
    if not isinstance(chain_handoff, bool):
        raise ConfigError("[slurm] chain_handoff must be true or false")
    return SlurmSettings(
        partition=raw.get("partition", ""),
        extra_args=_extra_args(raw, "slurm"),
        poll_seconds=_float(raw, "poll_seconds", 2.0, 0.1, 600.0),
        chain_handoff=chain_handoff,
        **{name: _string(raw, name, name) for name in commands},
    )


def _pbs(raw: Any) -> PbsSettings:
    if not isinstance(raw, dict):
        raise ConfigError("[pbs] must be a table")
    commands = ("qsub", "qstat", "qselect", "qdel")
    _known(raw, "pbs", {"queue", "extra_args", "poll_seconds", *commands})
    return PbsSettings(
        queue=raw.get("queue", ""),
        extra_args=_extra_args(raw, "pbs"),
        poll_seconds=_float(raw, "poll_seconds", 2.0, 0.1, 600.0),
        **{name: _string(raw, name, name) for name in commands},
    )


def _deploy(raw: Any) -> DeploySettings:
    if not isinstance(raw, dict):
        raise ConfigError("[deploy] must be a table")
    _known(raw, "deploy", {f.name for f in fields(DeploySettings)})
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("[deploy] enabled must be true or false")
    try:
        return DeploySettings(
            enabled=enabled,
            max_bytes=_int(raw, "max_bytes", 100 * 1024**2, 1024, 64 * 1024**3),
            max_entries=_int(raw, "max_entries", 10000, 1, 1_000_000),
            prepare_timeout_seconds=_float(
                raw, "prepare_timeout_seconds", 600.0, 1.0, 86400.0
            ),
        )
    except ConfigError as exc:
        raise ConfigError(f"[deploy] {exc}")


def _known(raw: dict[str, Any], table: str, names: set[str]) -> None:
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"[{table}] unknown setting(s): {', '.join(unknown)}")


def _extra_args(raw: dict[str, Any], table: str) -> list[str]:
    extra = raw.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise ConfigError(f"[{table}] extra_args must be a list of strings")
    return list(extra)
