"""`hpcsera-agent`: run (the daemon), once (one round, for cron), check (the config)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from hpcsera_agent import __version__
from hpcsera_agent.client import Refused, ServerUnavailable
from hpcsera_agent.config import ConfigError, load
from hpcsera_agent.service import Agent, AlreadyRunning


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
        config = load(args.config)
        agent = Agent(config)
        if args.command == "check":
            for item in agent.scan_inventory().values():
                print(f"{item['name']}\t{item['runner']}")
            return 0
        agent.take_state_folder()
        _install_signal_handlers(agent)
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


if __name__ == "__main__":
    sys.exit(main())
