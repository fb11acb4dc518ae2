from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.dispatch import receiver

from tokens.audit import security_event_record
from tokens.models import SecurityEvent
from web.recent import login_stamp


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs) -> None:
    login_stamp(request)
    security_event_record(user=user, kind=SecurityEvent.Kind.LOGIN, request=request)


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        security_event_record(
            user=user, kind=SecurityEvent.Kind.LOGOUT, request=request
        )
