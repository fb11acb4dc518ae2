from __future__ import annotations

from django import forms

from tokens import roles

DAY = 24 * 3600
LIFETIMES = [
    (3600, "1 hour"),
    (DAY, "1 day"),
    (7 * DAY, "7 days"),
    (30 * DAY, "30 days"),
    (90 * DAY, "90 days"),
    (365 * DAY, "365 days"),
]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, required=False)
    tag = forms.RegexField(
        regex=rf"\A{roles.TAG_PATTERN.pattern}\Z",
        max_length=63,
        initial="default",
        error_messages={
            "invalid": "1 to 63 characters of a-z, 0-9, _ and -, starting with a "
            "letter or digit."
        },
    )
    roles = forms.MultipleChoiceField(
        choices=[(r, r) for r in roles.ALL_ROLES],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one role."},
    )
    lifetime = forms.TypedChoiceField(choices=LIFETIMES, coerce=int, initial=30 * DAY)


class TagForm(forms.Form):
    tag = forms.RegexField(regex=rf"\A{roles.TAG_PATTERN.pattern}\Z", max_length=63)
