from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path

from jobs.urls import api_urlpatterns, faas_urlpatterns


def health(request):  # noqa: ANN001, ANN201
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health, name="health"),
    path("api/v1/", include(api_urlpatterns)),
    path("api/agent/v1/", include("agentapi.urls")),
    # Users' FaaS namespaces last: `<user>/function/<name>` cannot shadow the
    # fixed prefixes above.
    path("", include(faas_urlpatterns)),
]

handler400 = "hpcsera.errors.handler400"
handler403 = "hpcsera.errors.handler403"
handler404 = "hpcsera.errors.handler404"
handler500 = "hpcsera.errors.handler500"
