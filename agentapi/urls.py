from django.urls import path

from agentapi import views

urlpatterns = [
    path("agents", views.AgentRegisterView.as_view(), name="agent-register"),
    path(
        "agents/<str:agent_id>/claim",
        views.AgentClaimView.as_view(),
        name="agent-claim",
    ),
    path(
        "agents/<str:agent_id>/heartbeat",
        views.AgentHeartbeatView.as_view(),
        name="agent-heartbeat",
    ),
    path(
        "agents/<str:agent_id>/calls/<str:call_id>/report",
        views.AgentReportView.as_view(),
        name="agent-report",
    ),
]
