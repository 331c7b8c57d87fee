"""Secrets stay secret: keys and passwords never reach MLflow params, tags, reports or logs.

Keys come from environment variables (a Kubernetes Secret on the cluster) named by settings such as
``api_key_env``, never from settings themselves. What can still carry one: a URL with a password
(``http://user:pass@host``) and a value under a name that says it is a key, token or password.
Everything srlm writes about a run passes through :func:`redact_params` or :func:`redact_text`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# the last part of a (flattened) setting name: api_key, hf_token, password, client_secret, credentials, ...
_SECRET_NAME = re.compile(r"(^|[._-])(api_?key|key|token|password|passwd|secret|credentials?)$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):(?P<password>[^@/\s]+)@")


def secret_name(name: str) -> bool:
    """Whether a setting's name says its value is a secret (``*_env`` names the variable holding one: not)."""
    return not name.lower().endswith("_env") and bool(_SECRET_NAME.search(name))


def redact_text(text: str) -> str:
    """``text`` with every URL password replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params with secret-named values masked and URL passwords removed from the rest."""
    return {k: MASK if secret_name(k) and v not in (None, "") else (redact_text(v) if isinstance(v, str) else v)
            for k, v in params.items()}


class _RedactingFilter(logging.Filter):
    """Rewrites a log record's message without URL passwords (the HTTP client logs every request's URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def guard_loggers(*names: str) -> None:
    """Redact URL passwords from what the named loggers write (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())
