"""`manage.py link_identity`: tie a user to an identity at an OpenID provider.

For operators who provision accounts ahead of the first login; the login then
finds the user by issuer and subject instead of creating a new one.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from web.models import OidcIdentity


class Command(BaseCommand):
    help = "Link a user to an (issuer, subject) identity of the OpenID provider."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--user", required=True)
        parser.add_argument("--issuer", required=True)
        parser.add_argument("--subject", required=True)

    def handle(self, *args, **options) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user {options['user']!r}")
        identity, created = OidcIdentity.objects.get_or_create(
            issuer=options["issuer"],
            subject=options["subject"],
            defaults={"user": user},
        )
        if identity.user_id != user.pk:
            raise CommandError("that identity belongs to another user")
        self.stdout.write("linked" if created else "already linked")
