"""Operators see tokens and can revoke them; no secret can be read or made here."""

from django.contrib import admin, messages
from django.utils import timezone

from tokens.models import SecurityEvent, Token


@admin.register(Token)
class TokenAdmin(admin.ModelAdmin):
    list_display = (
        "prefix",
        "user",
        "tag",
        "name",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("tag",)
    search_fields = ("prefix", "user__username", "name")
    # The digest is left out on purpose: it is of no use to a person.
    fields = (
        "prefix",
        "user",
        "tag",
        "roles",
        "name",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(SecurityEvent)
class SecurityEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "user", "kind", "source_ip")
    list_filter = ("kind",)
    search_fields = ("user__username",)
    readonly_fields = ("user", "kind", "detail", "source_ip", "created_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
