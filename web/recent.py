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
# Set by the OIDC backend from the ID token's `auth_time` during the login.
AUTH_TIME_KEY = "hpcsera_auth_time"


def login_stamp(request: HttpRequest) -> None:
    """Stamp the session with when the person authenticated: the provider's
    `auth_time` when it says, else now (a provider that does not say is
    trusted to have asked; the re-login link asks it to with max_age=0)."""
    if request is None or not hasattr(request, "session"):
        return
    now = int(time.time())
    auth_time = request.session.pop(AUTH_TIME_KEY, None)
    stamp = min(now, auth_time) if isinstance(auth_time, int) else now
    request.session[SESSION_KEY] = stamp


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
