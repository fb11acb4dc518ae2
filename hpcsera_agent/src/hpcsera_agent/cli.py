"""`hpcsera-agent`: run (the daemon), once (one round, for cron), check (the config)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from hpcsera_agent import __version__, renewal
from hpcsera_agent.client import Refused, ServerUnavailable
from hpcsera_agent.config import Config, ConfigError, load
from hpcsera_agent.login import Login, LoginError, make_key_pair, run_login
from hpcsera_agent.service import Agent, AlreadyRunning

DEFAULT_KEY = "~/.config/hpcsera/agent.key"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcsera-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "-c",
        "--config",
        help="TOML file (default: "
        "$HPCSERA_AGENT_CONFIG or ~/.config/hpcsera/agent.toml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve calls until stopped (SIGTERM or Ctrl-C)")
    sub.add_parser("once", help="serve the calls ready now, wait for them, exit")
    sub.add_parser("check", help="validate the config and list the functions offered")
    init = sub.add_parser("init", help="make a key pair and print the public key")
    init.add_argument(
        "--key",
        help="where the private key goes (default: the "
        "config's [login] key_file, or ~/.config/hpcsera/agent.key)",
    )
    sub.add_parser("login", help="get a token by the user's approval ([login])")
    return parser


def _install_signal_handlers(agent: Agent) -> None:
    def handle(signum: int, frame: object) -> None:
        if agent.stop.is_set():
            # A second signal: leave now, whatever is still running.
            raise SystemExit(128 + signum)
        agent.stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "login":
            return _login(load(args.config, require_token=False))
        config = load(args.config)
        agent = Agent(config)
        if args.command == "check":
            for item in agent.scan_inventory().values():
                print(f"{item['name']}\t{item['runner']}")
            return 0
        agent.take_state_folder()
        _install_signal_handlers(agent)
        if args.command == "run":
            renewal.start_renewal(agent, config)
        if args.command == "once":
            agent.run_once()
        else:
            # The server may be down at start too: run_forever backs off.
            agent.run_forever()
        return 0
    except AlreadyRunning as exc:
        print(f"hpcsera-agent: {exc}", file=sys.stderr)
        return 5
    except ConfigError as exc:
        print(f"hpcsera-agent: config: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(
            f"hpcsera-agent: the server refused: {exc.detail} ({exc.code})",
            file=sys.stderr,
        )
        return 3
    except ServerUnavailable as exc:
        print(f"hpcsera-agent: server unavailable: {exc}", file=sys.stderr)
        return 4
    except LoginError as exc:
        print(f"hpcsera-agent: login failed: {exc}", file=sys.stderr)
        return 6


def _init(args: argparse.Namespace) -> int:
    key = args.key
    if key is None:
        try:
            config = load(args.config, require_token=False)
            key = config.login.key_file if config.login else None
        except ConfigError:
            key = None
    path = Path(os.path.expanduser(str(key or DEFAULT_KEY)))
    print(make_key_pair(path), end="")
    print(
        f"# private key: {path} (mode 0600); paste the public key above into "
        "the web UI under Clients",
        file=sys.stderr,
    )
    return 0


def _login(config: Config) -> int:
    if config.login is None or config.token_file is None:
        raise ConfigError("login needs a [login] table and token_file")
    settings = config.login
    run_login(
        Login(config.server, settings.client_id, settings.key_file),
        settings.user,
        settings.roles,
        settings.tag,
        config.token_file,
        threading.Event(),
        lambda line: print(line, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
