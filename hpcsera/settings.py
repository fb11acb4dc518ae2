"""Settings, all from environment variables (see README, "Configuration").

Without any variable set, the embedded default runs: a SQLite file under var/,
an in-process notifier, a secret key generated once into var/. Production
(HPCSERA_ENV=production) requires a secret key and refuses to fall back.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from hpcsera import env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env.string("HPCSERA_VAR_DIR", str(BASE_DIR / "var")))

PRODUCTION = env.string("HPCSERA_ENV", "development") == "production"
if env.string("HPCSERA_ENV", "development") not in ("production", "development"):
    raise ImproperlyConfigured("HPCSERA_ENV must be production or development")


def _secret_key() -> str:
    key = env.secret("SECRET_KEY")
    if key:
        if PRODUCTION and len(key) < 32:
            raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters")
        return key
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required")
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

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "tokens",
    "jobs",
    "agentapi",
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
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Several threads write at once (agents reporting, clients submitting):
    # wait for the write lock instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
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
    "DEFAULT_AUTHENTICATION_CLASSES": ["tokens.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tokens.auth.RolePermission"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "hpcsera.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

HPCSERA = {
    # Longest a sync FaaS request waits before answering 202 with a status URL.
    "SYNC_WAIT_SECONDS": env.number("HPCSERA_SYNC_WAIT_SECONDS", 30.0, minimum=0.0),
    # Longest an agent's claim request is held when there is no work.
    "CLAIM_WAIT_SECONDS": env.number("HPCSERA_CLAIM_WAIT_SECONDS", 25.0, minimum=0.0),
    "CLAIM_MAX_CALLS": env.integer("HPCSERA_CLAIM_MAX_CALLS", 64, minimum=1),
    # How long a claimed call stays leased to its agent without a report.
    "LEASE_SECONDS": env.integer("HPCSERA_LEASE_SECONDS", 300, minimum=5),
    # Per process, the claim path looks for expired leases at most this often.
    "LEASE_SWEEP_SECONDS": env.number("HPCSERA_LEASE_SWEEP_SECONDS", 5.0, minimum=0.0),
    # An agent not heard from for longer than this shows as not alive.
    "AGENT_ALIVE_SECONDS": env.integer("HPCSERA_AGENT_ALIVE_SECONDS", 90, minimum=5),
    "MAX_BODY_BYTES": env.integer("HPCSERA_MAX_BODY_BYTES", 1024 * 1024, minimum=1),
    "MAX_ARG_VALUE_CHARS": env.integer("HPCSERA_MAX_ARG_VALUE_CHARS", 4096, minimum=1),
    "MAX_ARGS": env.integer("HPCSERA_MAX_ARGS", 64, minimum=1),
    "MAX_OUTPUT_BYTES": env.integer("HPCSERA_MAX_OUTPUT_BYTES", 1024 * 1024, minimum=1),
    "MAX_TAIL_CHARS": env.integer("HPCSERA_MAX_TAIL_CHARS", 8192, minimum=1),
    # Upper bound of a token's lifetime when `issue_token` is not told one.
    "TOKEN_DEFAULT_LIFETIME_SECONDS": env.integer(
        "HPCSERA_TOKEN_DEFAULT_LIFETIME_SECONDS", 30 * 24 * 3600, minimum=60
    ),
}

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
