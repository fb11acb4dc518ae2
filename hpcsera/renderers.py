from __future__ import annotations

from rest_framework import renderers

from hpcsera.errors import ApiError


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    """DRF's HTML view of the API, offering a method's form only to whoever may
    use it. Our permission errors are ApiError, which DRF's check here does not
    expect, so a read-only session would otherwise see an error page."""

    def show_form_for_method(self, view, method, request, obj):
        try:
            return super().show_form_for_method(view, method, request, obj)
        except ApiError:
            return False
