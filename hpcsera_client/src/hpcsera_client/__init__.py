"""HPCSerA client SDK: call functions on HPC clusters over REST."""

__version__ = "0.1.0"

from hpcsera_client.client import Call, CallStatus, Client, Job
from hpcsera_client.errors import (
    ApiError,
    AuthenticationFailed,
    BadRequest,
    CallTimeout,
    Conflict,
    FunctionFailed,
    HpcseraError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    TransportError,
)
from hpcsera_client.login import (
    AccessDenied,
    LoginError,
    LoginExpired,
    LoginUnavailable,
)
from hpcsera_client.transport import RetryPolicy

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
]
