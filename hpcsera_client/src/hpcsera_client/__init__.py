"""HPCSerA client SDK: call functions on HPC clusters over REST."""

__version__ = "0.1.0"

from hpcsera_client.client import Call, CallStatus, Client, Job  # noqa: E402
from hpcsera_client.errors import (  # noqa: E402
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
from hpcsera_client.login import (  # noqa: E402
    AccessDenied,
    LoginError,
    LoginExpired,
    LoginUnavailable,
)
from hpcsera_client.transport import RetryPolicy  # noqa: E402

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
