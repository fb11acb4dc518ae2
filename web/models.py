from django.conf import settings
from django.db import models
from django.utils import timezone


class OidcIdentity(models.Model):
    """Who a user is at the identity provider: the issuer and its subject.

    Users are found by this pair, never by e-mail: an address can change hands
    or be asserted by another provider, a subject at one issuer cannot.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identities"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "subject"], name="identity_unique"
            )
        ]
