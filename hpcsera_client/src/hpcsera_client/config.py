"""Where the CLI finds its server and token.

In order: command-line flags, then $HPCSERA_SERVER and $HPCSERA_TOKEN (or
$HPCSERA_TOKEN_FILE), then the file `hpcsera login` wrote
($HPCSERA_CONFIG, default ~/.config/hpcsera/client.json, mode 0600).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    """The CLI cannot tell where to connect or with what token."""


@dataclass(frozen=True)
class Settings:
    server: str
    token: str


def config_path() -> Path:
    default = Path.home() / ".config" / "hpcsera" / "client.json"
    return Path(os.environ.get("HPCSERA_CONFIG") or default)


def _saved() -> dict:
    path = config_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}")
    return data if isinstance(data, dict) else {}


def _token_from_file(name: str) -> str:
    try:
        return Path(name).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {name}: {exc.strerror}")


def resolve(server: str | None, token_file: str | None) -> Settings:
    saved = _saved()
    server = server or os.environ.get("HPCSERA_SERVER") or saved.get("server")
    token_file = token_file or os.environ.get("HPCSERA_TOKEN_FILE")
    if token_file:
        token = _token_from_file(token_file)
    else:
        token = os.environ.get("HPCSERA_TOKEN") or saved.get("token") or ""
    if not server:
        raise ConfigError("no server: pass --server, set HPCSERA_SERVER or log in")
    if not token:
        raise ConfigError("no token: set HPCSERA_TOKEN(_FILE) or run `hpcsera login`")
    return Settings(server=server.rstrip("/"), token=token)


def save(settings: Settings) -> Path:
    """Write server and token, readable by the user only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"server": settings.server, "token": settings.token}, out)
    os.chmod(path, 0o600)
    return path
