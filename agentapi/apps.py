from django.apps import AppConfig


class AgentApiConfig(AppConfig):
    name = "agentapi"
    default_auto_field = "django.db.models.BigAutoField"
