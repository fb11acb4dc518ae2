"""Prepare the test provider's database: users and HPCSerA's client.

python -m tests.oidc_provider.setup REDIRECT CLIENT_ID SECRET USER:PASSWORD...
"""

import os
import sys

import django


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.oidc_provider.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from oauth2_provider.models import Application

    redirect_uri, client_id, client_secret, *people = argv
    call_command("migrate", verbosity=0)
    for person in people:
        name, password = person.split(":", 1)
        get_user_model().objects.create_user(
            name, email=f"{name}@uni.example", password=password
        )
    Application.objects.create(
        name="HPCSerA",
        client_id=client_id,
        client_secret=client_secret,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=redirect_uri,
        algorithm=Application.RS256_ALGORITHM,
        skip_authorization=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
