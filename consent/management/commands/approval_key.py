"""`manage.py approval_key`: the public key agents pin to check run approvals."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from consent import signing


class Command(BaseCommand):
    help = (
        "Print the public key (PEM) of the approval signing key, or make a new "
        "private key file with --create."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--create",
            metavar="PATH",
            help="write a new private key to PATH (0600); refuses to overwrite",
        )

    def handle(self, *args, **options) -> None:
        if options["create"]:
            pem = self._create(Path(options["create"]).expanduser())
        else:
            try:
                pem = signing.approval_public_pem()
            except ImproperlyConfigured as exc:
                raise CommandError(str(exc))
        # Only the public key is ever printed; stdout is the PEM alone so that
        # scripts can hand it to agents as it is.
        self.stdout.write(pem, ending="")

    def _create(self, path: Path) -> str:
        try:
            key = signing.key_file_create(path)
        except FileExistsError:
            raise CommandError(f"{path} exists already; it is not overwritten")
        except OSError as exc:
            raise CommandError(f"{path} cannot be written: {exc.strerror}")
        self.stderr.write(
            f"Wrote a new approval key to {path}; point "
            "HPCSERA_APPROVAL_KEY_FILE at it. Its public key:"
        )
        return signing.public_pem(key)
