"""POST /api/v1/code and its reads: what an upload answers, what it refuses,
and who may see it. Archives are built here with tarfile and zipfile."""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
import tarfile
import zipfile
from datetime import datetime, timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from consent import code
from consent.models import CodeUpload
from tests.conftest import register_agent
from tokens import roles

pytestmark = pytest.mark.django_db

SCRIPT = b"#!/bin/sh\necho hello\n"
AGENT_ROLES = [roles.GET_JOB, roles.UPDATE_JOB_STATUS, roles.GET_CODE]


# -- building archives -------------------------------------------------------------


def member(name: str, data: bytes = b"", **fields) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o755
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def directory(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, type=tarfile.DIRTYPE)


def tar_gz(*members, format=tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=format) as archive:
        for info, data in members:
            payload = io.BytesIO(data) if info.isfile() and data else None
            archive.addfile(info, payload)
    return buffer.getvalue()


def zip_bytes(*entries: tuple[str, bytes], modes: dict[str, int] | None = None):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = (modes or {}).get(name, stat.S_IFREG | 0o755) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def good_tar() -> bytes:
    return tar_gz(
        directory("pkg"),
        member("run", SCRIPT),
        member("pkg/setup.sh", b"#!/bin/sh\npip install .\n"),
        member("link-to-run", type=tarfile.SYMTYPE, linkname="run"),
    )


# -- talking to the API ------------------------------------------------------------


@pytest.fixture
def alice_client(alice, make_token, client_for):
    return client_for(make_token(alice))


def upload(client, **fields):
    """POST the form; bytes values become files, like a browser or curl -F."""
    form = {"function": "hello"}
    for name, value in fields.items():
        if isinstance(value, bytes):
            value = SimpleUploadedFile(f"{name}.bin", value)
        form[name] = value
    return client.post("/api/v1/code", form, format="multipart")


def refused(answer, code_name: str) -> None:
    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] == code_name, answer.json()
    assert not CodeUpload.objects.exists()


@pytest.fixture
def limits(settings):
    def set_limits(**values) -> None:
        settings.HPCSERA = {**settings.HPCSERA, **values}

    return set_limits


# -- accepted uploads --------------------------------------------------------------


def test_a_script_upload_is_held_with_the_digest_of_exactly_its_bytes(alice_client):
    before = timezone.now()
    answer = upload(
        alice_client,
        script=SCRIPT,
        commit="ABCDEF1234",
        description="greets the world",
        site="site-a",
    )

    assert answer.status_code == 202, answer.content
    body = answer.json()
    assert body["state"] == "pending"
    assert body["kind"] == "script"
    assert body["format"] == "script"
    assert body["sha256"] == hashlib.sha256(SCRIPT).hexdigest()
    assert body["size"] == len(SCRIPT)
    assert body["files"] == ["run"] and body["file_count"] == 1
    assert body["prepare"] == ""
    assert body["commit"] == "abcdef1234"
    assert body["description"] == "greets the world"
    assert body["site"] == "site-a"
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(seconds=599) <= expires - before <= timedelta(seconds=610)
    assert body["status_url"] == f"/api/v1/code/{body['id']}"
    assert body["consent_url"].endswith("/ui/requests")
    stored = CodeUpload.objects.get(id=body["id"])
    assert bytes(stored.content) == SCRIPT and stored.state == "pending"


def test_a_tar_gz_upload_lists_its_entries_without_unpacking(alice_client):
    data = good_tar()
    answer = upload(alice_client, archive=data, prepare="pkg/setup.sh")

    assert answer.status_code == 202, answer.content
    body = answer.json()
    assert body["kind"] == "archive" and body["format"] == "tar.gz"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert body["files"] == ["pkg/", "run", "pkg/setup.sh", "link-to-run"]
    assert body["file_count"] == 4
    assert body["prepare"] == "pkg/setup.sh"
    assert body["commit"] == "" and body["description"] == ""


def test_a_zip_upload_is_sniffed_by_its_magic_bytes_not_its_name(alice_client):
    data = zip_bytes(("run", SCRIPT), ("tools/prepare", b"#!/bin/sh\n"))
    answer = alice_client.post(
        "/api/v1/code",
        {
            "function": "hello",
            "archive": SimpleUploadedFile("code.tar.gz", data),
            "prepare": "./tools/prepare",
        },
        format="multipart",
    )

    assert answer.status_code == 202, answer.content
    body = answer.json()
    assert body["kind"] == "archive" and body["format"] == "zip"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["files"] == ["run", "tools/prepare"]
    assert body["prepare"] == "tools/prepare"


def test_an_upload_is_offered_to_no_agent_before_it_is_approved(
    alice, alice_client, make_token, client_for
):
    agent_client = client_for(make_token(alice, role_list=AGENT_ROLES))
    agent_id = register_agent(agent_client)
    assert upload(alice_client, script=SCRIPT).status_code == 202
    assert upload(alice_client, archive=good_tar(), prepare="run").status_code == 202

    claim = agent_client.post(
        f"/api/agent/v1/agents/{agent_id}/claim",
        {"max": 1, "deploy": True},
        format="json",
    )

    assert claim.status_code == 200
    assert "deploy" not in claim.json()
    assert not CodeUpload.objects.exclude(state="pending").exists()


# -- refusals ----------------------------------------------------------------------


def test_an_archive_and_a_script_together_are_refused(alice_client):
    refused(
        upload(alice_client, script=SCRIPT, archive=good_tar(), prepare="run"),
        "missing_code",
    )


def test_a_form_without_code_is_refused(alice_client):
    refused(upload(alice_client, prepare="run"), "missing_code")


@pytest.mark.parametrize(
    "prepare",
    ["", "missing.sh", "pkg", "pkg/", "link-to-run", "../run", "/run"],
    ids=["none", "absent", "directory", "directory-slash", "symlink", "dotdot", "abs"],
)
def test_an_archive_whose_prepare_is_no_regular_file_in_it_is_refused(
    alice_client, prepare
):
    refused(
        upload(alice_client, archive=good_tar(), prepare=prepare), "invalid_prepare"
    )


def test_a_script_with_a_preparation_step_is_refused(alice_client):
    refused(upload(alice_client, script=SCRIPT, prepare="run"), "invalid_prepare")


def test_an_archive_that_is_no_archive_is_refused(alice_client):
    refused(
        upload(alice_client, archive=b"just some text\n", prepare="run"),
        "invalid_archive",
    )


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_a_damaged_gzip_is_refused(alice_client, damage):
    data = good_tar()
    if damage == "garbled":
        data = data[:10] + bytes(b ^ 0x5A for b in data[10:])
    else:
        data = data[: len(data) // 2]
    refused(upload(alice_client, archive=data, prepare="run"), "invalid_archive")


UNSAFE_TAR_ENTRIES = {
    "absolute-path": member("/etc/cron.d/evil", b"x"),
    "dotdot": member("pkg/../../evil", b"x"),
    "symlink-leaving": member("escape", type=tarfile.SYMTYPE, linkname="../../etc"),
    "symlink-absolute": member("escape", type=tarfile.SYMTYPE, linkname="/etc"),
    "hardlink-outside": member("passwd", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
    "hardlink-unknown": member("copy", type=tarfile.LNKTYPE, linkname="not-there"),
    "char-device": member("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
    "block-device": member("disk", type=tarfile.BLKTYPE, devmajor=8, devminor=0),
    "fifo": member("pipe", type=tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("kind", UNSAFE_TAR_ENTRIES)
def test_a_tar_with_an_unsafe_entry_is_refused(alice_client, kind):
    data = tar_gz(member("run", SCRIPT), UNSAFE_TAR_ENTRIES[kind])
    refused(upload(alice_client, archive=data, prepare="run"), "unsafe_archive")


def test_a_tar_with_more_entries_than_the_limit_is_refused(alice_client, limits):
    limits(CODE_MAX_ENTRIES=3)
    data = tar_gz(*(member(f"f{i}", b"x") for i in range(4)))
    refused(upload(alice_client, archive=data, prepare="f0"), "unsafe_archive")


def test_a_tar_at_the_entry_limit_is_accepted(alice_client, limits):
    limits(CODE_MAX_ENTRIES=3)
    data = tar_gz(*(member(f"f{i}", b"x") for i in range(3)))
    assert upload(alice_client, archive=data, prepare="f0").status_code == 202


def test_a_tar_declaring_more_bytes_than_the_limit_is_refused(alice_client, limits):
    limits(CODE_MAX_UNPACKED_BYTES=1000)
    data = tar_gz(member("run", SCRIPT), member("big", b"\0" * 1001))
    refused(upload(alice_client, archive=data, prepare="run"), "unsafe_archive")


def test_a_gzip_bomb_is_refused_before_it_is_inflated(alice_client, limits):
    # The file entries declare a few bytes each; their pax headers (each under
    # the 64 KiB a header may have) inflate to 2.4 MB in all.
    limits(CODE_MAX_UNPACKED_BYTES=1000)
    members = []
    for number in range(40):
        bomb, _ = member(f"f{number}", SCRIPT)
        bomb.pax_headers = {"comment": "A" * (60 * 1024)}
        members.append((bomb, SCRIPT))
    data = tar_gz(*members, format=tarfile.PAX_FORMAT)
    assert len(data) < 64 * 1024
    assert len(gzip.decompress(data)) > 2 * 1024 * 1024

    answer = upload(alice_client, archive=data, prepare="f0")

    refused(answer, "unsafe_archive")
    assert "more bytes than the limit" in answer.json()["detail"]


def test_one_huge_extended_header_is_refused_before_tarfile_reads_it(
    alice_client,
):
    bomb, _ = member("run", SCRIPT)
    bomb.pax_headers = {"comment": "A" * (8 * 1024 * 1024)}
    data = tar_gz((bomb, SCRIPT), format=tarfile.PAX_FORMAT)

    answer = upload(alice_client, archive=data, prepare="run")

    refused(answer, "unsafe_archive")
    assert "extended header" in answer.json()["detail"]


def test_a_zip_with_a_symbolic_link_is_refused(alice_client):
    data = zip_bytes(
        ("run", SCRIPT),
        ("escape", b"/etc/passwd"),
        modes={"escape": stat.S_IFLNK | 0o777},
    )
    refused(upload(alice_client, archive=data, prepare="run"), "unsafe_archive")


@pytest.mark.parametrize(
    "entries, modes",
    [
        ([("/etc/evil", b"x")], {}),
        ([("a/../../evil", b"x")], {}),
        ([("pipe", b"")], {"pipe": stat.S_IFIFO | 0o644}),
        ([("null", b"")], {"null": stat.S_IFCHR | 0o644}),
    ],
    ids=["absolute", "dotdot", "fifo", "char-device"],
)
def test_a_zip_with_an_unsafe_entry_is_refused(alice_client, entries, modes):
    data = zip_bytes(("run", SCRIPT), *entries, modes=modes)
    refused(upload(alice_client, archive=data, prepare="run"), "unsafe_archive")


def test_a_zip_over_the_entry_or_byte_limits_is_refused(alice_client, limits):
    limits(CODE_MAX_ENTRIES=2, CODE_MAX_UNPACKED_BYTES=1000)
    many = zip_bytes(("run", SCRIPT), ("a", b"1"), ("b", b"2"))
    large = zip_bytes(("run", SCRIPT), ("zeros", b"\0" * 1000))
    refused(upload(alice_client, archive=many, prepare="run"), "unsafe_archive")
    refused(upload(alice_client, archive=large, prepare="run"), "unsafe_archive")


def test_an_upload_over_the_size_limit_is_refused(alice_client, limits):
    limits(CODE_MAX_BYTES=len(SCRIPT) - 1)
    answer = upload(alice_client, script=SCRIPT)
    refused(answer, "upload_too_large")
    assert answer.json()["max_bytes"] == len(SCRIPT) - 1


def test_a_body_far_over_the_limit_is_refused_by_its_declared_length(
    alice_client, limits
):
    limits(CODE_MAX_BYTES=100)
    refused(upload(alice_client, script=b"#!" + b"x" * (80 * 1024)), "upload_too_large")


def test_an_upload_at_the_size_limit_is_accepted(alice_client, limits):
    limits(CODE_MAX_BYTES=len(SCRIPT))
    assert upload(alice_client, script=SCRIPT).status_code == 202


@pytest.mark.parametrize("commit", ["abc12", "xyz1234", "a" * 65, "abcdef1!"])
def test_a_bad_commit_is_refused(alice_client, commit):
    refused(upload(alice_client, script=SCRIPT, commit=commit), "invalid_commit")


@pytest.mark.parametrize("description", ["two\nlines", "tab\there", "bell\x07"])
def test_a_description_of_more_than_one_plain_line_is_refused(
    alice_client, description
):
    refused(
        upload(alice_client, script=SCRIPT, description=description),
        "invalid_description",
    )


@pytest.mark.parametrize("script", [b"echo no shebang\n", b" #!/bin/sh\n"])
def test_a_script_that_is_not_executable_as_is_refused(alice_client, script):
    refused(upload(alice_client, script=script), "invalid_script")


def test_an_empty_script_is_refused(alice_client):
    # DRF's FileField refuses an empty file before the service sees it.
    refused(upload(alice_client, script=b""), "invalid_input")


@pytest.mark.parametrize("name", ["two words", "..", "a/b", "ünï"])
def test_a_bad_function_name_is_refused(alice_client, name):
    refused(upload(alice_client, function=name, script=SCRIPT), "invalid_function_name")


def test_a_function_name_too_long_is_refused(alice_client):
    answer = upload(alice_client, function="f" * 65, script=SCRIPT)
    assert answer.status_code == 400
    assert not CodeUpload.objects.exists()


def test_a_bad_site_is_refused(alice_client):
    refused(upload(alice_client, script=SCRIPT, site="no such/site"), "invalid_site")


def test_a_json_body_is_refused_as_the_wrong_media_type(alice_client):
    answer = alice_client.post(
        "/api/v1/code",
        {"function": "hello", "script": SCRIPT.decode()},
        format="json",
    )
    assert answer.status_code == 415
    assert answer.json()["code"] == "unsupported_media_type"
    assert not CodeUpload.objects.exists()


def test_a_multipart_body_without_a_boundary_is_refused(alice_client):
    answer = alice_client.generic(
        "POST",
        "/api/v1/code",
        b"function=hello&script=x",
        content_type="multipart/form-data",
    )
    refused(answer, "malformed_upload")


def test_a_multipart_body_not_matching_its_boundary_carries_no_fields(alice_client):
    answer = alice_client.generic(
        "POST",
        "/api/v1/code",
        b"--nope\r\nthis is not what the boundary promised",
        content_type="multipart/form-data; boundary=elsewhere",
    )
    refused(answer, "invalid_input")
    assert "function" in answer.json()["errors"]


# -- reads and who may do what ---------------------------------------------------


def test_the_status_shows_the_state_and_each_deployment(
    alice, alice_client, make_token, client_for
):
    upload_id = upload(alice_client, script=SCRIPT).json()["id"]
    pending = alice_client.get(f"/api/v1/code/{upload_id}")
    assert pending.status_code == 200
    assert pending.json()["state"] == "pending"
    assert pending.json()["deployments"] == []
    assert pending.json()["decided_at"] is None

    code.code_upload_decide(
        upload=CodeUpload.objects.get(id=upload_id),
        user=alice,
        approve=True,
        sha256=hashlib.sha256(SCRIPT).hexdigest(),
    )
    agent_client = client_for(make_token(alice, role_list=AGENT_ROLES))
    agent_id = register_agent(agent_client, site="site-b")
    offer = agent_client.post(
        f"/api/agent/v1/agents/{agent_id}/claim", {"deploy": True}, format="json"
    ).json()["deploy"][0]
    agent_client.post(
        f"/api/agent/v1/agents/{agent_id}/deployments/{offer['id']}/report",
        {"state": "failed", "reason": "no compiler", "log_tail": "gcc: not found"},
        format="json",
    )

    body = alice_client.get(f"/api/v1/code/{upload_id}").json()
    assert body["state"] == "approved" and body["decided_at"] is not None
    [deployment] = body["deployments"]
    assert deployment["agent_id"] == agent_id
    assert deployment["site"] == "site-b"
    assert deployment["state"] == "failed"
    assert deployment["reason"] == "no compiler"
    assert deployment["log_tail"] == "gcc: not found"
    assert deployment["finished_at"] is not None


def test_the_list_shows_only_the_tokens_own_user_and_tag(
    alice, bob, alice_client, make_token, client_for
):
    first = upload(alice_client, script=SCRIPT).json()["id"]
    second = upload(alice_client, archive=good_tar(), prepare="run").json()["id"]

    listed = alice_client.get("/api/v1/code").json()["uploads"]
    assert [u["id"] for u in listed] == [second, first]
    for outsider in (make_token(bob), make_token(alice, tag="proj-b")):
        client = client_for(outsider)
        assert client.get("/api/v1/code").json() == {"uploads": []}
        answer = client.get(f"/api/v1/code/{first}")
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"


def test_bobs_uploads_are_his_own(bob, alice_client, make_token, client_for):
    bobs_client = client_for(make_token(bob))
    bobs = upload(bobs_client, script=SCRIPT).json()["id"]
    assert CodeUpload.objects.get(id=bobs).user == bob
    assert alice_client.get("/api/v1/code").json() == {"uploads": []}
    assert [u["id"] for u in bobs_client.get("/api/v1/code").json()["uploads"]] == [
        bobs
    ]


def test_an_unknown_or_malformed_upload_id_is_404(alice_client):
    for upload_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        assert alice_client.get(f"/api/v1/code/{upload_id}").status_code == 404


def test_a_token_without_post_code_can_neither_upload_nor_read(
    alice, alice_client, make_token, client_for
):
    upload_id = upload(alice_client, script=SCRIPT).json()["id"]
    others = [r for r in roles.ALL_ROLES if r != roles.POST_CODE]
    client = client_for(make_token(alice, role_list=others))

    for answer in (
        upload(client, script=b"#!/bin/sh\nrm -rf ~\n"),
        client.get("/api/v1/code"),
        client.get(f"/api/v1/code/{upload_id}"),
    ):
        assert answer.status_code == 403
        assert answer.json()["code"] == "missing_role"
    assert CodeUpload.objects.count() == 1


def test_the_sender_can_withdraw_a_pending_upload_and_its_bytes_go(alice_client):
    upload_id = upload(alice_client, script=SCRIPT).json()["id"]

    answer = alice_client.delete(f"/api/v1/code/{upload_id}")
    again = alice_client.delete(f"/api/v1/code/{upload_id}")

    assert answer.status_code == 200 and answer.json()["state"] == "withdrawn"
    assert again.status_code == 200
    stored = CodeUpload.objects.get(id=upload_id)
    assert bytes(stored.content) == b"" and "withdrawn" in stored.reason


def test_an_approved_upload_cannot_be_withdrawn(alice, alice_client):
    from consent.code import code_upload_decide

    upload_id = upload(alice_client, script=SCRIPT).json()["id"]
    code_upload_decide(
        upload=CodeUpload.objects.get(id=upload_id),
        user=alice,
        approve=True,
        sha256=hashlib.sha256(SCRIPT).hexdigest(),
    )

    answer = alice_client.delete(f"/api/v1/code/{upload_id}")

    assert answer.status_code == 409 and answer.json()["code"] == "decided"
    assert CodeUpload.objects.get(id=upload_id).state == "approved"


def test_calling_a_function_whose_upload_waits_says_so(alice_client):
    upload_id = upload(alice_client, script=SCRIPT, function="fresh").json()["id"]

    answer = alice_client.post("/alice/function/fresh")

    assert answer.status_code == 404
    assert answer.json()["code"] == "unknown_function"
    assert (
        f"An upload of it ({upload_id}) waits for your approval"
        in (answer.json()["detail"])
    )


def test_a_foreign_tag_gets_no_hint_about_uploads(alice, alice_client, make_token):
    from rest_framework.test import APIClient

    upload(alice_client, script=SCRIPT, function="fresh")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token(alice, tag='proj-b')}")

    answer = other.post("/alice/function/fresh")

    assert answer.status_code == 404 and "upload" not in answer.json()["detail"]
