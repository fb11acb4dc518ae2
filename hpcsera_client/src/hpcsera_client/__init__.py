"""HPCSerA client SDK: call functions on HPC clusters over REST."""

__version__ = "0.1.0"

from hpcsera_client.client import Call, CallStatus, Client, Job
from hpcsera_client.errors import (
    ApiError,
    AuthenticationFailed,
    BadRequest,
    CallTimeout,
    Conflict,
    DeploymentFailed,
    DigestMismatch,
    FunctionFailed,
    HpcseraError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    TransportError,
    UploadRejected,
    UploadTimeout,
)
from hpcsera_client.login import (
    AccessDenied,
    LoginError,
    LoginExpired,
    LoginUnavailable,
)
from hpcsera_client.transport import RetryPolicy
from hpcsera_client.uploads import Upload

__all__ = [
    "AccessDenied",
    "ApiError",
    "AuthenticationFailed",
    "BadRequest",
    "Call",
    "CallStatus",
    "CallTimeout",
    "Client",
    "Conflict",
    "DeploymentFailed",
    "DigestMismatch",
    "FunctionFailed",
    "HpcseraError",
    "Job",
    "LoginError",
    "LoginExpired",
    "LoginUnavailable",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "Upload",
    "UploadRejected",
    "UploadTimeout",
]
