"""`manage.py issue_token`: create a token and print it, the only time it is shown."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from hpcsera.errors import ApiError
from tokens.services import token_issue


class Command(BaseCommand):
    help = "Create an API token for a user and print it once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--user", required=True)
        parser.add_argument("--tag", default="default")
        parser.add_argument(
            "--roles",
            required=True,
            help="comma-separated, e.g. POST_Job,GET_JobStatus",
        )
        parser.add_argument("--lifetime", type=int, help="seconds; default: the cap")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--create-user", action="store_true", help="create the user if missing"
        )
        parser.add_argument(
            "--show-callback-secret",
            action="store_true",
            help="also print the callback signing secret, on a second line",
        )

    def handle(self, *args, **options) -> None:
        User = get_user_model()
        username = options["user"]
        if options["create_user"]:
            user, _ = User.objects.get_or_create(username=username)
        else:
            user = User.objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"no user {username!r} (add --create-user)")
        roles = [r for r in options["roles"].split(",") if r.strip()]
        try:
            issued = token_issue(
                user=user,
                tag=options["tag"],
                roles=roles,
                lifetime_seconds=options["lifetime"],
                name=options["name"],
            )
        except ApiError as exc:
            raise CommandError(exc.detail)
        # The first line is the token alone: scripts read it.
        self.stdout.write(issued.secret)
        if options["show_callback_secret"]:
            self.stdout.write(f"callback-secret: {issued.callback_secret}")
