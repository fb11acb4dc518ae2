from django.urls import path

from jobs import views

api_urlpatterns = [
    path("jobs", views.JobListView.as_view(), name="job-list"),
    path("jobs/<str:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/calls", views.JobCallsView.as_view(), name="job-calls"),
    path("calls/<str:call_id>", views.CallDetailView.as_view(), name="call-detail"),
    path(
        "calls/<str:call_id>/finish",
        views.CallFinishView.as_view(),
        name="call-finish",
    ),
    path("agents", views.AgentListView.as_view(), name="agent-list"),
    path("agents/<str:agent_id>", views.AgentDetailView.as_view(), name="agent-detail"),
]

faas_urlpatterns = [
    path("<str:user>/function/<str:name>", views.FaasView.as_view(), name="faas-sync"),
    path(
        "<str:user>/async-function/<str:name>",
        views.AsyncFaasView.as_view(),
        name="faas-async",
    ),
]
