"""POST_Code: upload a function's code, then follow its consent and deployment."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from consent.code import (
    code_upload_create,
    code_upload_withdraw,
    upload_get,
    uploads_visible,
)
from consent.models import CodeUpload
from hpcsera.errors import BadInput
from jobs import openapi
from tokens import roles


class UploadForm(serializers.Serializer):
    function = serializers.CharField(max_length=64)
    archive = serializers.FileField(
        required=False, help_text="tar.gz or zip with the function's files"
    )
    prepare = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        help_text="path of the preparation executable inside the archive",
    )
    script = serializers.FileField(
        required=False, help_text="a single script: becomes the function"
    )
    commit = serializers.CharField(required=False, allow_blank=True, default="")
    description = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=200
    )
    site = serializers.CharField(required=False, allow_blank=True, default="")


class Deployed(serializers.Serializer):
    agent_id = serializers.UUIDField()
    site = serializers.CharField()
    state = serializers.ChoiceField(choices=["offered", "deployed", "failed"])
    reason = serializers.CharField()
    log_tail = serializers.CharField()
    offered_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class UploadDetail(serializers.Serializer):
    id = serializers.UUIDField()
    state = serializers.ChoiceField(choices=CodeUpload.State.choices)
    function = serializers.CharField()
    kind = serializers.ChoiceField(choices=["archive", "script"])
    format = serializers.ChoiceField(choices=CodeUpload.Format.choices)
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    file_count = serializers.IntegerField()
    files = serializers.ListField(child=serializers.CharField())
    prepare = serializers.CharField()
    commit = serializers.CharField()
    description = serializers.CharField()
    site = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)
    consent_url = serializers.CharField()
    status_url = serializers.CharField()
    deployments = Deployed(many=True)


class UploadList(serializers.Serializer):
    uploads = UploadDetail(many=True)


def _detail(request: Request, upload: CodeUpload, deployments=None) -> dict:
    return {
        "id": str(upload.id),
        "state": upload.state,
        "function": upload.function,
        "kind": "script" if upload.format == CodeUpload.Format.SCRIPT else "archive",
        "format": upload.format,
        "sha256": upload.sha256,
        "size": upload.size,
        "file_count": upload.file_count,
        "files": upload.files,
        "prepare": upload.prepare,
        "commit": upload.commit,
        "description": upload.description,
        "site": upload.site,
        "reason": upload.reason,
        "created_at": upload.created_at.isoformat(),
        "expires_at": upload.expires_at.isoformat(),
        "decided_at": upload.decided_at.isoformat() if upload.decided_at else None,
        "consent_url": request.build_absolute_uri(reverse("ui-inbox")),
        "status_url": reverse("code-detail", args=[upload.id]),
        "deployments": [
            {
                "agent_id": str(d.agent_id),
                "site": d.agent.site,
                "state": d.state,
                "reason": d.reason,
                "log_tail": d.log_tail,
                "offered_at": d.offered_at.isoformat(),
                "finished_at": d.finished_at.isoformat() if d.finished_at else None,
            }
            for d in (deployments if deployments is not None else [])
        ],
    }


def _too_large() -> BadInput:
    limit = settings.HPCSERA["CODE_MAX_BYTES"]
    return BadInput(
        f"The upload is larger than the limit of {limit} bytes.",
        code="upload_too_large",
        max_bytes=limit,
    )


def _read_file(field) -> bytes:
    if field.size > settings.HPCSERA["CODE_MAX_BYTES"]:
        raise _too_large()
    return field.read()


class CodeListView(APIView):
    required_roles = {"GET": {roles.POST_CODE}, "POST": {roles.POST_CODE}}
    parser_classes = [MultiPartParser]

    @extend_schema(responses={200: UploadList, **openapi.errors()})
    def get(self, request: Request) -> Response:
        uploads = uploads_visible(token=request.auth).order_by("-created_at")[:50]
        return Response({"uploads": [_detail(request, u) for u in uploads]})

    @extend_schema(
        request={"multipart/form-data": UploadForm},
        responses={202: UploadDetail, **openapi.errors(400)},
    )
    def post(self, request: Request) -> Response:
        self._check_length(request)
        try:
            form = UploadForm(data=request.data)
            form.is_valid(raise_exception=True)
        except ParseError:
            raise BadInput(
                "The body is not valid multipart/form-data.", code="malformed_upload"
            )
        data = form.validated_data
        archive, script = data.get("archive"), data.get("script")
        if (archive is None) == (script is None):
            raise BadInput(
                "Send exactly one of archive (with prepare) and script.",
                code="missing_code",
            )
        upload = code_upload_create(
            token=request.auth,
            function=data["function"],
            data=_read_file(archive or script),
            is_script=script is not None,
            prepare=data["prepare"],
            commit=data["commit"],
            description=data["description"],
            site=data["site"],
            request=request,
        )
        return Response(_detail(request, upload), status=202)

    def _check_length(self, request: Request) -> None:
        declared = request.META.get("CONTENT_LENGTH") or ""
        # Room for the form's other fields and the multipart framing.
        limit = settings.HPCSERA["CODE_MAX_BYTES"] + 64 * 1024
        if declared.isdigit() and int(declared) > limit:
            raise _too_large()
        if not declared and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", ""):
            raise BadInput(
                "Uploads need a Content-Length; chunked uploads are not accepted.",
                code="length_required",
            )


class CodeDetailView(APIView):
    required_roles = {"GET": {roles.POST_CODE}, "DELETE": {roles.POST_CODE}}

    @extend_schema(responses={200: UploadDetail, **openapi.errors(404, 409)})
    def delete(self, request: Request, upload_id: str) -> Response:
        """Withdraw a pending upload: its bytes are deleted, it can no longer
        be approved. Repeating it is harmless."""
        upload = upload_get(token=request.auth, upload_id=upload_id)
        upload = code_upload_withdraw(upload=upload, request=request)
        return Response(_detail(request, upload))

    @extend_schema(responses={200: UploadDetail, **openapi.errors(404)})
    def get(self, request: Request, upload_id: str) -> Response:
        upload = upload_get(token=request.auth, upload_id=upload_id)
        deployments = upload.deployments.select_related("agent").order_by("offered_at")
        return Response(_detail(request, upload, list(deployments)))
