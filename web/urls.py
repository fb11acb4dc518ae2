from django.urls import path
from mozilla_django_oidc.views import OIDCLogoutView

from consent import ui as consent_ui
from web import views

urlpatterns = [
    path("", views.home, name="ui-home"),
    path("login", views.login_page, name="ui-login"),
    path("logout", OIDCLogoutView.as_view(), name="ui-logout"),
    path("tokens", views.tokens, name="ui-tokens"),
    path(
        "tokens/<str:token_id>/revoke", views.token_revoke_view, name="ui-token-revoke"
    ),
    path("jobs", views.jobs, name="ui-jobs"),
    path("jobs/<str:job_id>", views.job_detail, name="ui-job"),
    path("agents", views.agents, name="ui-agents"),
    path("audit", views.audit, name="ui-audit"),
    path("api-tag", views.api_tag, name="ui-api-tag"),
    path("clients", consent_ui.clients, name="ui-clients"),
    path(
        "clients/<str:client_id>/revoke",
        consent_ui.client_revoke_view,
        name="ui-client-revoke",
    ),
    path("requests", consent_ui.inbox, name="ui-inbox"),
    path("requests/count", consent_ui.inbox_count, name="ui-inbox-count"),
    path("requests/<str:request_id>/decide", consent_ui.decide, name="ui-decide"),
    path(
        "code/<str:upload_id>/decide",
        consent_ui.decide_upload,
        name="ui-decide-upload",
    ),
    path("runs/<str:approval_id>/decide", consent_ui.decide_run, name="ui-decide-run"),
    path(
        "runs/<str:approval_id>/passkey/prepare",
        consent_ui.run_passkey_prepare,
        name="ui-run-passkey-prepare",
    ),
    path(
        "runs/<str:approval_id>/passkey/approve",
        consent_ui.run_passkey_decide,
        name="ui-run-passkey-approve",
    ),
    path("passkeys", consent_ui.passkeys, name="ui-passkeys"),
    path("passkeys/options", consent_ui.passkey_options, name="ui-passkey-options"),
    path("passkeys/add", consent_ui.passkey_add, name="ui-passkey-add"),
    path(
        "passkeys/<str:passkey_id>/remove",
        consent_ui.passkey_remove_view,
        name="ui-passkey-remove",
    ),
]
