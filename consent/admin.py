from django.contrib import admin

from consent.models import AuthRequest, Client


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "client_id",
        "user",
        "algorithm",
        "created_at",
        "revoked_at",
    )
    search_fields = ("name", "client_id", "user__username")
    readonly_fields = ("client_id", "user", "public_key", "algorithm", "created_at")


@admin.register(AuthRequest)
class AuthRequestAdmin(admin.ModelAdmin):
    list_display = ("created_at", "user", "client", "tag", "state", "source_ip")
    list_filter = ("state",)
    # The request id itself is never stored; its digest is of no use here.
    exclude = ("digest",)
    readonly_fields = (
        "client",
        "user",
        "roles",
        "tag",
        "binding_message",
        "source_ip",
        "state",
        "approved_roles",
        "interval",
        "created_at",
        "expires_at",
        "decided_at",
        "last_polled_at",
    )

    def has_add_permission(self, request) -> bool:
        return False
