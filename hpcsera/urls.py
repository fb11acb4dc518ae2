from django.conf import settings
from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from consent import api as code_api
from consent import views as consent_views
from hpcsera.capabilities import CapabilitiesView
from jobs.urls import api_urlpatterns, faas_urlpatterns

PUBLIC = {"permission_classes": [AllowAny], "authentication_classes": []}


def health(request):
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", RedirectView.as_view(url="/ui/", permanent=False)),
    path("admin/", admin.site.urls),
    path("healthz", health, name="health"),
    path("ui/", include("web.urls")),
    # The schema and its viewer describe the API; they are public on purpose.
    path("api/schema", SpectacularAPIView.as_view(**PUBLIC), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", **PUBLIC),
        name="docs",
    ),
    path("api/v1/capabilities", CapabilitiesView.as_view(), name="capabilities"),
    path("api/v1/code", code_api.CodeListView.as_view(), name="code-list"),
    path(
        "api/v1/code/<str:upload_id>",
        code_api.CodeDetailView.as_view(),
        name="code-detail",
    ),
    path("api/v1/", include(api_urlpatterns)),
    path("oauth/", include("consent.urls")),
    path(
        ".well-known/oauth-authorization-server",
        consent_views.metadata,
        name="oauth-metadata",
    ),
    path("api/agent/v1/", include("agentapi.urls")),
    *(
        [path("oidc/", include("mozilla_django_oidc.urls"))]
        if settings.OIDC_ENABLED
        else []
    ),
    # Users' FaaS namespaces last: `<user>/function/<name>` cannot shadow the
    # fixed prefixes above.
    path("", include(faas_urlpatterns)),
]

handler400 = "hpcsera.errors.handler400"
handler403 = "hpcsera.errors.handler403"
handler404 = "hpcsera.errors.handler404"
handler500 = "hpcsera.errors.handler500"
