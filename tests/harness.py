"""Real processes for end-to-end tests: a gunicorn server on a database of its
own (a fresh PostgreSQL database when DATABASE_URL names one, else SQLite) and
agent processes, all on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
AGENT = str(Path(PYTHON).parent / "hpcsera-agent")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fresh_database(tmp: Path) -> tuple[str, callable]:
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        return f"sqlite:///{tmp / 'e2e.sqlite3'}", lambda: None
    import psycopg

    name = f"hpcsera_e2e_{uuid.uuid4().hex[:10]}"
    admin_url = base.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return base.rsplit("/", 1)[0] + "/" + name, drop


@dataclass
class Server:
    url: str
    env: dict
    process: subprocess.Popen
    drop_database: callable
    log: Path

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def token(self, user: str, roles: str, tag: str = "default") -> str:
        return self.manage(
            "issue_token",
            "--user",
            user,
            "--create-user",
            "--roles",
            roles,
            "--tag",
            tag,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.drop_database()


def start_server(tmp: Path, port: int | None = None, **settings: str) -> Server:
    database_url, drop = _fresh_database(tmp)
    port = port or free_port()
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        HPCSERA_VAR_DIR=str(tmp / "var"),
        **settings,
    )
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
    )
    log = tmp / "server.log"
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "gunicorn",
            "-b",
            f"127.0.0.1:{port}",
            "--workers",
            env.get("E2E_WORKERS", "1"),
            "hpcsera.wsgi",
        ],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    if not _wait_until_up(url + "/healthz", process):
        process.kill()
        drop()
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
    return Server(url, env, process, drop, log)


def _wait_until_up(url: str, process: subprocess.Popen, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return True
        except (requests.ConnectionError, requests.Timeout):
            # A server still starting may accept and not answer within 1 s.
            time.sleep(0.1)
    return False


@dataclass
class Provider:
    """The test OpenID provider and what HPCSerA needs to know about it."""

    url: str
    process: subprocess.Popen
    client_id: str
    client_secret: str

    @property
    def issuer(self) -> str:
        return self.url + "/o"

    def rp_settings(self) -> dict[str, str]:
        return {
            "OIDC_RP_CLIENT_ID": self.client_id,
            "OIDC_RP_CLIENT_SECRET": self.client_secret,
            "OIDC_OP_ISSUER": self.issuer,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": self.issuer + "/authorize/",
            "OIDC_OP_TOKEN_ENDPOINT": self.issuer + "/token/",
            "OIDC_OP_USER_ENDPOINT": self.issuer + "/userinfo/",
            "OIDC_OP_JWKS_ENDPOINT": self.issuer + "/.well-known/jwks.json",
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_provider(tmp: Path, redirect_uri: str, people: list[str]) -> Provider:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    port = free_port()
    # "localhost", not 127.0.0.1: browsers keep cookies per host name, so the
    # provider's and HPCSerA's sessions cannot mix.
    url = f"http://localhost:{port}"
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.oidc_provider.settings",
        OP_DB=str(tmp / "provider.sqlite3"),
        OP_RSA_KEY=pem,
        OP_ISSUER=url + "/o",
    )
    client_id, client_secret = "hpcsera-" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    subprocess.run(
        [
            PYTHON,
            "-m",
            "tests.oidc_provider.setup",
            redirect_uri,
            client_id,
            client_secret,
            *people,
        ],
        cwd=ROOT,
        env=env,
        check=True,
    )
    log = tmp / "provider.log"
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "gunicorn",
            "-c",
            "/dev/null",
            "-b",
            f"127.0.0.1:{port}",
            "--threads",
            "8",
            "tests.oidc_provider.wsgi",
        ],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    if not _wait_until_up(url + "/o/.well-known/openid-configuration", process):
        process.kill()
        raise RuntimeError(f"provider did not start: {log.read_text()[-2000:]}")
    return Provider(url, process, client_id, client_secret)


@dataclass
class AgentProcess:
    config: Path
    process: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def write_agent_config(
    tmp: Path,
    server: Server,
    token: str,
    functions_dir: Path,
    name: str = "agent",
    extra: str = "",
) -> Path:
    config = tmp / f"{name}.toml"
    config.write_text(
        f'server = "{server.url}"\n'
        f'token = "{token}"\n'
        f'site = "{name}"\n'
        f'functions_dir = "{functions_dir}"\n'
        f'state_dir = "{tmp / (name + "-state")}"\n'
        f"claim_wait_seconds = 5\n"
        f"{extra}\n"
    )
    return config


def start_agent(config: Path, *, wait_registered: bool = True) -> AgentProcess:
    log = config.with_suffix(".log")
    process = subprocess.Popen(
        [AGENT, "-c", str(config), "run"],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    agent = AgentProcess(config, process, log)
    if wait_registered:
        deadline = time.monotonic() + 20
        while "registered as site" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not register: {log.read_text()[-2000:]}")
            time.sleep(0.05)
    return agent


def install_function(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(source)
    path.chmod(0o755)
    return path


def slurm_available() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return False
    states = ("idle", "mix", "alloc")
    return done.returncode == 0 and any(state in done.stdout for state in states)
