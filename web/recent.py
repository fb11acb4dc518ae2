"""How long ago the user logged in, for decisions that need a fresh login.

Approving code or a run is the most consequential click in HPCSerA; a browser
left logged in for a day should not be enough for it. The login time is kept
in the session when the login happens (web.signals).
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

SESSION_KEY = "hpcsera_login_at"


def login_stamp(request: HttpRequest) -> None:
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_KEY] = int(time.time())


def login_is_recent(request: HttpRequest) -> bool:
    logged_in_at = request.session.get(SESSION_KEY)
    if not isinstance(logged_in_at, int):
        return False
    age = time.time() - logged_in_at
    return 0 <= age <= settings.HPCSERA["RECENT_LOGIN_SECONDS"]


def reauthenticate_url(next_url: str) -> str:
    """Where to log in again: the identity provider, asked for a fresh login."""
    try:
        start = reverse("oidc_authentication_init")
    except NoReverseMatch:
        return reverse("ui-login") + "?" + urlencode({"next": next_url})
    return start + "?" + urlencode({"next": next_url, "prompt": "login"})
