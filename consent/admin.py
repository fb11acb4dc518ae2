from django.contrib import admin

from consent.models import (
    AuthRequest,
    Client,
    CodeUpload,
    Deployment,
    Passkey,
    RunApproval,
)


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


class ReadOnly(admin.ModelAdmin):
    """Operators may look and delete; only the owner's consent changes these."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(CodeUpload)
class CodeUploadAdmin(ReadOnly):
    list_display = ("created_at", "user", "tag", "function", "state", "sha256", "size")
    list_filter = ("state", "format")
    search_fields = ("function", "sha256", "commit", "user__username")
    # The code itself stays out of the admin: operators never handle it.
    exclude = ("content",)

    def get_queryset(self, request):
        return super().get_queryset(request).defer("content")


@admin.register(Deployment)
class DeploymentAdmin(ReadOnly):
    list_display = ("offered_at", "upload", "agent", "state", "finished_at")
    list_filter = ("state",)


@admin.register(RunApproval)
class RunApprovalAdmin(ReadOnly):
    list_display = ("created_at", "user", "agent", "function", "purpose", "state")
    list_filter = ("state", "purpose")
    exclude = ("signature",)


@admin.register(Passkey)
class PasskeyAdmin(ReadOnly):
    list_display = ("created_at", "user", "name", "rp_id", "last_used_at")
    search_fields = ("name", "user__username")
