"""A refused request names the role the token lacks."""

from __future__ import annotations

from hpcsera_client import cli
from tests.client.scripted import Answer
from tests.client.test_cli_unit import env, one_line_error  # noqa: F401


def test_a_missing_role_names_the_role_to_add(env, capsys):  # noqa: F811
    env.then(
        Answer(
            403,
            {
                "code": "missing_role",
                "detail": "The token lacks the role(s) this operation needs.",
                "required_roles": ["POST_Code"],
                "missing_roles": ["POST_Code"],
            },
        )
    )
    assert cli.main(["status", "c1"]) == 3
    assert "POST_Code" in one_line_error(capsys)
