"""Settings, all from environment variables (see README, "Configuration").

Without any variable set, the embedded default runs: a SQLite file under var/,
an in-process notifier, a secret key generated once into var/. Production
(HPCSERA_ENV=production) requires a secret key and refuses to fall back.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from hpcsera import env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env.string("HPCSERA_VAR_DIR", str(BASE_DIR / "var")))

PRODUCTION = env.string("HPCSERA_ENV", "development") == "production"
if env.string("HPCSERA_ENV", "development") not in ("production", "development"):
    raise ImproperlyConfigured("HPCSERA_ENV must be production or development")


# Production settings that are missing or wrong, all named in one error at the
# end of this file rather than one per start.
PROBLEMS: list[str] = []


def _secret_key() -> str:
    key = env.secret("SECRET_KEY")
    if key:
        if PRODUCTION and len(key) < 32:
            PROBLEMS.append("SECRET_KEY must be at least 32 characters")
        return key
    if PRODUCTION:
        PROBLEMS.append("SECRET_KEY (or SECRET_KEY_FILE) is required")
        return ""
    # Development only: one random key per checkout, kept so sessions survive
    # restarts of `make run`.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.boolean("DEBUG", False)
ALLOWED_HOSTS = [
    h.strip()
    for h in env.string(
        "ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,[::1]"
    ).split(",")
    if h.strip()
]
# Behind a reverse proxy that ends TLS: trust its X-Forwarded-Proto, so that
# URLs this server builds (the OIDC redirect URI, links) are https. Only when
# the proxy sets that header itself and nothing else can reach this server.
if env.boolean("HPCSERA_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "mozilla_django_oidc",
    "tokens",
    "jobs",
    "agentapi",
    "consent",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hpcsera.urls"
WSGI_APPLICATION = "hpcsera.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env.string("DATABASE_URL", f"sqlite:///{VAR_DIR / 'hpcsera.sqlite3'}"),
        conn_max_age=60,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool per server process bounds its connections whatever the number of
    # threads: waiting requests (long-polls, sync calls) hold none, and the
    # rest borrow one only while they query.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": 1,
            "max_size": env.integer("HPCSERA_DB_POOL_SIZE", 16, minimum=1),
            "timeout": 20,
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Several threads write at once (agents reporting, clients submitting):
    # wait for the write lock instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
    # A file, not the in-memory default: tests with threads need SQLite's
    # locking and busy timeout, which shared-cache memory databases lack.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    VAR_DIR.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Empty REDIS_URL: notifications stay inside this process, which is correct
# only for a single server process (the embedded default).
REDIS_URL = env.string("REDIS_URL", "")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tokens.auth.BearerTokenAuthentication",
        "tokens.auth.ReadOnlySessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tokens.auth.RolePermission"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "hpcsera.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_SCHEMA_CLASS": "hpcsera.schema.RoleAutoSchema",
    "DEFAULT_PARSER_CLASSES": ["hpcsera.parsers.StrictJSONParser"],
    "EXCEPTION_HANDLER": "hpcsera.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

HPCSERA = {
    # Longest a sync FaaS request waits before answering 202 with a status URL.
    "SYNC_WAIT_SECONDS": env.number("HPCSERA_SYNC_WAIT_SECONDS", 30.0, minimum=0.0),
    # Longest an agent's claim request is held when there is no work.
    "CLAIM_WAIT_SECONDS": env.number("HPCSERA_CLAIM_WAIT_SECONDS", 25.0, minimum=0.0),
    "CLAIM_MAX_CALLS": env.integer("HPCSERA_CLAIM_MAX_CALLS", 64, minimum=1),
    # Waiters look at the database again after this long even without a
    # wake-up: the safety net for a publication lost while Redis reconnected.
    "NOTIFY_RECHECK_SECONDS": env.number(
        "HPCSERA_NOTIFY_RECHECK_SECONDS", 30.0, minimum=1.0
    ),
    # How long a claimed call stays leased to its agent without a report.
    "LEASE_SECONDS": env.integer("HPCSERA_LEASE_SECONDS", 300, minimum=5),
    # Per process, the claim path looks for expired leases at most this often.
    "LEASE_SWEEP_SECONDS": env.number("HPCSERA_LEASE_SWEEP_SECONDS", 5.0, minimum=0.0),
    # An agent not heard from for longer than this shows as not alive.
    "AGENT_ALIVE_SECONDS": env.integer("HPCSERA_AGENT_ALIVE_SECONDS", 90, minimum=5),
    "MAX_BODY_BYTES": env.integer("HPCSERA_MAX_BODY_BYTES", 1024 * 1024, minimum=1),
    # Arguments travel in the request line, which gunicorn caps at 8 KiB;
    # anything longer belongs in the JSON body.
    "MAX_ARG_VALUE_CHARS": env.integer("HPCSERA_MAX_ARG_VALUE_CHARS", 2048, minimum=1),
    # Sync requests waiting at once per server process; beyond this a sync call
    # answers 202 at once, so waiting clients cannot take every thread from
    # agents and status requests.
    "MAX_SYNC_WAITERS": env.integer("HPCSERA_MAX_SYNC_WAITERS", 32, minimum=0),
    "MAX_ARGS": env.integer("HPCSERA_MAX_ARGS", 64, minimum=1),
    "MAX_OUTPUT_BYTES": env.integer("HPCSERA_MAX_OUTPUT_BYTES", 1024 * 1024, minimum=1),
    "MAX_TAIL_CHARS": env.integer("HPCSERA_MAX_TAIL_CHARS", 8192, minimum=1),
    "MAX_JOB_CALLS": env.integer("HPCSERA_MAX_JOB_CALLS", 1000, minimum=1),
    # Upper bound of a token's lifetime when `issue_token` is not told one.
    # The decoupled login: how long a request waits for the user, how often a
    # client may poll, and the limits against flooding a user with requests.
    "AUTH_REQUEST_SECONDS": env.integer(
        "HPCSERA_AUTH_REQUEST_SECONDS", 300, minimum=10
    ),
    "POLL_INTERVAL_SECONDS": env.integer("HPCSERA_POLL_INTERVAL_SECONDS", 5, minimum=1),
    "MAX_PENDING_PER_CLIENT": env.integer(
        "HPCSERA_MAX_PENDING_PER_CLIENT", 3, minimum=1
    ),
    "MAX_REQUESTS_PER_USER_HOUR": env.integer(
        "HPCSERA_MAX_REQUESTS_PER_USER_HOUR", 30, minimum=1
    ),
    "MAX_REQUESTS_PER_CLIENT_HOUR": env.integer(
        "HPCSERA_MAX_REQUESTS_PER_CLIENT_HOUR", 10, minimum=1
    ),
    # This server's issuer URL: the only audience client assertions may name.
    # Empty: taken from each request's scheme and host (development only).
    "ISSUER": env.string("HPCSERA_ISSUER", "").rstrip("/"),
    "TOKEN_DEFAULT_LIFETIME_SECONDS": env.integer(
        "HPCSERA_TOKEN_DEFAULT_LIFETIME_SECONDS", 30 * 24 * 3600, minimum=60
    ),
    # Code uploads (consent.code): the largest upload, what its archive may
    # unpack to, and how long it waits for its owner's approval.
    "CODE_MAX_BYTES": env.integer("HPCSERA_CODE_MAX_BYTES", 20 * 1024**2, minimum=1),
    "CODE_MAX_ENTRIES": env.integer("HPCSERA_CODE_MAX_ENTRIES", 10000, minimum=1),
    "CODE_MAX_UNPACKED_BYTES": env.integer(
        "HPCSERA_CODE_MAX_UNPACKED_BYTES", 200 * 1024**2, minimum=1
    ),
    # Pending uploads per user: they hold bytes and fill the owner's inbox.
    "CODE_MAX_PENDING": env.integer("HPCSERA_CODE_MAX_PENDING", 10, minimum=1),
    "CODE_MAX_PENDING_BYTES": env.integer(
        "HPCSERA_CODE_MAX_PENDING_BYTES", 100 * 1024**2, minimum=1
    ),
    "CODE_CONSENT_SECONDS": env.integer(
        "HPCSERA_CODE_CONSENT_SECONDS", 600, minimum=10
    ),
    # Approving code or a run needs a login at most this old.
    "RECENT_LOGIN_SECONDS": env.integer(
        "HPCSERA_RECENT_LOGIN_SECONDS", 600, minimum=10
    ),
    # How long an agent's request to run something waits for its owner, and
    # how long a signed approval stays valid.
    "APPROVAL_SECONDS": env.integer("HPCSERA_APPROVAL_SECONDS", 600, minimum=10),
    # Reverse proxies whose X-Forwarded-For is believed for source addresses
    # (audit log, consent page); nobody's by default.
    "TRUSTED_PROXIES": env.networks("HPCSERA_TRUSTED_PROXIES"),
    # Callbacks (jobs.callbacks): attempts in all, the back-off before the
    # second attempt (doubled for each further one, with jitter, up to the
    # cap), and the time one attempt may take.
    "CALLBACK_MAX_ATTEMPTS": env.integer("HPCSERA_CALLBACK_MAX_ATTEMPTS", 8, minimum=1),
    "CALLBACK_BACKOFF_SECONDS": env.number(
        "HPCSERA_CALLBACK_BACKOFF_SECONDS", 10.0, minimum=0.0
    ),
    "CALLBACK_BACKOFF_MAX_SECONDS": env.number(
        "HPCSERA_CALLBACK_BACKOFF_MAX_SECONDS", 3600.0, minimum=0.0
    ),
    "CALLBACK_TIMEOUT_SECONDS": env.number(
        "HPCSERA_CALLBACK_TIMEOUT_SECONDS", 10.0, minimum=0.1
    ),
    # Only for tests and local trials: lets callbacks reach 127.0.0.0/8 and
    # ::1. Every other internal address stays refused.
    "CALLBACK_ALLOW_LOOPBACK": env.boolean("HPCSERA_CALLBACK_ALLOW_LOOPBACK", False),
    # PEM file of the Ed25519 key that signs run approvals (consent.signing).
    # Empty: a development key is made once under var/; production refuses.
    "APPROVAL_KEY_FILE": env.string("HPCSERA_APPROVAL_KEY_FILE", ""),
    # Passkeys (consent.passkeys): the WebAuthn RP id and origin. Empty: the
    # host the UI is served on (without port) and the request's own origin.
    # Agents pin both, so set them explicitly behind a proxy.
    "WEBAUTHN_RP_ID": env.string("HPCSERA_WEBAUTHN_RP_ID", ""),
    "WEBAUTHN_ORIGIN": env.string("HPCSERA_WEBAUTHN_ORIGIN", ""),
}

# Celery sends callbacks when a broker is configured (CELERY_BROKER_URL, else
# REDIS_URL). Without one (the embedded default) `manage.py run_timers` sends
# them itself, so `make run` needs no worker.
CELERY_BROKER_URL = env.string("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True
# A broker that is down must not hold a request: the row stays due and the
# next dispatch sends it.
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# Deployments (and test runs) sharing one Redis keep apart by queue name.
CELERY_TASK_DEFAULT_QUEUE = env.string("HPCSERA_CELERY_QUEUE", "hpcsera")

SPECTACULAR_SETTINGS = {
    "TITLE": "HPCSerA API",
    "DESCRIPTION": (
        "Run functions on HPC clusters over REST. Send a token as "
        "'Authorization: Bearer <token>'; each operation lists the roles it "
        "needs as OAuth2 scopes."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"RunnerEnum": "jobs.models.Function.Runner"},
}

# The web UI logs in through the institution's OpenID provider. Without
# OIDC_RP_CLIENT_ID the login page says so and only the admin's password
# login remains (for operators).
OIDC_RP_CLIENT_ID = env.string("OIDC_RP_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = env.secret("OIDC_RP_CLIENT_SECRET")
OIDC_OP_ISSUER = env.string("OIDC_OP_ISSUER")
OIDC_OP_AUTHORIZATION_ENDPOINT = env.string("OIDC_OP_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = env.string("OIDC_OP_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = env.string("OIDC_OP_USER_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = env.string("OIDC_OP_JWKS_ENDPOINT")
OIDC_RP_SIGN_ALGO = env.string("OIDC_RP_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = "openid email profile"
OIDC_TIMEOUT = 10
OIDC_AUTHENTICATE_CLASS = "web.oidc.AuthenticationRequestView"
OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID)
if OIDC_ENABLED:
    missing = [
        name
        for name in (
            "OIDC_RP_CLIENT_SECRET",
            "OIDC_OP_ISSUER",
            "OIDC_OP_AUTHORIZATION_ENDPOINT",
            "OIDC_OP_TOKEN_ENDPOINT",
            "OIDC_OP_USER_ENDPOINT",
            "OIDC_OP_JWKS_ENDPOINT",
        )
        if not globals()[name]
    ]
    if missing:
        raise ImproperlyConfigured(f"OIDC needs {', '.join(missing)} as well")
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
if OIDC_ENABLED:
    AUTHENTICATION_BACKENDS.insert(0, "web.oidc.IdentityBackend")
LOGIN_URL = "/ui/login"
LOGIN_REDIRECT_URL = "/ui/tokens"
LOGOUT_REDIRECT_URL = "/ui/login"

if PRODUCTION and not HPCSERA["ISSUER"]:
    PROBLEMS.append("HPCSERA_ISSUER (this server's public URL) is required")
if PRODUCTION and not HPCSERA["APPROVAL_KEY_FILE"]:
    PROBLEMS.append(
        "HPCSERA_APPROVAL_KEY_FILE (Ed25519 key, PEM) is required; make one with "
        "`openssl genpkey -algorithm ed25519 -out PATH`"
    )
if PRODUCTION and not ALLOWED_HOSTS and HPCSERA["ISSUER"]:
    # The issuer's host is the one name this server is certainly reached by.
    ALLOWED_HOSTS = [urlsplit(HPCSERA["ISSUER"]).hostname or ""]
if PROBLEMS:
    raise ImproperlyConfigured("; ".join(PROBLEMS))

# Mail for notifications (token requests); without a host, none is sent.
EMAIL_HOST = env.string("EMAIL_HOST", "")
EMAIL_PORT = env.integer("EMAIL_PORT", 25)
DEFAULT_FROM_EMAIL = env.string("DEFAULT_FROM_EMAIL", "hpcsera@localhost")

# Agents report up to MAX_OUTPUT_BYTES of output; JSON escaping can grow it.
DATA_UPLOAD_MAX_MEMORY_SIZE = 8 * HPCSERA["MAX_OUTPUT_BYTES"] + 64 * 1024

if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.string("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
