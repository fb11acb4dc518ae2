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
    path(
        "agents/<str:agent_id>/deployments/<str:deployment_id>/archive",
        views.DeploymentArchiveView.as_view(),
        name="agent-deployment-archive",
    ),
    path(
        "agents/<str:agent_id>/deployments/<str:deployment_id>/report",
        views.DeploymentReportView.as_view(),
        name="agent-deployment-report",
    ),
    path(
        "agents/<str:agent_id>/approvals",
        views.ApprovalRequestView.as_view(),
        name="agent-approvals",
    ),
    path(
        "agents/<str:agent_id>/approvals/<str:approval_id>",
        views.ApprovalView.as_view(),
        name="agent-approval",
    ),
]
