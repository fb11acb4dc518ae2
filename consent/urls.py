from django.urls import path

from consent import views

urlpatterns = [
    path("bc-authorize", views.backchannel_authorize, name="oauth-bc-authorize"),
    path("token", views.token, name="oauth-token"),
    path("revoke", views.revoke, name="oauth-revoke"),
    path("introspect", views.introspect, name="oauth-introspect"),
]
