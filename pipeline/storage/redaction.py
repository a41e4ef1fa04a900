"""Keeping credentials out of every message, record and log line.

:func:`redact` removes URI userinfo (with or without the scheme), signed-URL parameters,
credential-bearing HTTP headers and AWS access key ids, and every credential value this
process knows: values registered from storage options and URIs, and the standard credential
environment variables. :func:`public_options` masks credential option values for records.
:func:`install_log_redaction` passes every log record of the process through :func:`redact`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Iterable, Mapping

# Option names whose values are credentials in fsspec/s3fs/gcsfs/adlfs storage options.
SECRET_OPTION_NAMES = frozenset(
    {"key", "secret", "token", "session_token", "password", "account_key", "sas_token",
     "client_secret", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
     "credentials", "connection_string"}
)
SECRET_ENV_NAMES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN",
    "RAY_AUTH_TOKEN",
)

_secret_values: set[str] = set()
_secret_lock = threading.Lock()


def register_secrets(values: Iterable[Any]) -> None:
    """Remember credential values so :func:`redact` removes them from any text."""
    with _secret_lock:
        for value in values:
            if isinstance(value, str) and len(value) >= 4:
                _secret_values.add(value)


def register_uri_secrets(uri: str) -> None:
    """Remember a URI's password (``scheme://user:password@host``) and signed-URL tokens, so
    messages that quote the URI in any mangled form (e.g. without its scheme) are redacted."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(str(uri))
        password = parts.password
    except ValueError:
        return
    found = [password, f"{parts.username}:{password}"] if password else []
    found += [value for name, value in parse_qsl(parts.query)
              if _SIGNED_QUERY.search(f"?{name}=x")]
    register_secrets(found)


def secret_option_values(options: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            found.extend(secret_option_values(value))
        elif name.lower() in SECRET_OPTION_NAMES and isinstance(value, str):
            found.append(value)
    return found


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
# The same without the scheme, as in paths fsspec strips the protocol from before raising:
# "user:password@host:port/path".
_BARE_USERINFO = re.compile(
    r"(?<![\w.%+/-])[\w.%+~-]+:[^\s/@]+@(?=[A-Za-z0-9.-]+(?::\d+)?/)")
_SIGNED_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|"
    r"access_token|key)=)[^&\s]+"
)


# botocore's DEBUG log prints each request's headers, e.g. {'X-Amz-Security-Token': b'...',
# 'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA.../...'}; credentials from an instance
# role or a credentials file are not known to this process by value, so match them by form.
_SECRET_HEADERS = re.compile(
    r"(?i)((?:x-amz-security-token|authorization|x-goog-api-key|x-ms-authorization)"
    r"['\"]?\s*[:=]\s*(?:b?['\"])?)([^'\",}\s][^'\",}]*)")
_AWS_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")


def redact(text: str) -> str:
    """Remove credentials from text: URI userinfo, signed-URL parameters, credential headers,
    AWS access key ids, known secret values."""
    text = _USERINFO.sub(r"\g<scheme>***@", str(text))
    text = _BARE_USERINFO.sub("***@", text)
    text = _SIGNED_QUERY.sub(r"\1***", text)
    text = _SECRET_HEADERS.sub(r"\1***", text)
    text = _AWS_ACCESS_KEY_ID.sub("***", text)
    env_values = [os.environ.get(name) for name in SECRET_ENV_NAMES]
    with _secret_lock:
        values = set(_secret_values)
    values.update(v for v in env_values if v and len(v) >= 4)
    # Longest first so a secret containing another secret is removed whole.
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def public_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Storage options safe to record: credential values replaced by '***'."""
    clean: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            clean[name] = public_options(value)
        elif name.lower() in SECRET_OPTION_NAMES:
            clean[name] = "***"
        else:
            clean[name] = redact(str(value)) if isinstance(value, str) else value
    return clean


_log_redaction_installed = False


def install_log_redaction() -> None:
    """Pass every log record this process creates through :func:`redact` (idempotent).

    Libraries log credentials at DEBUG: botocore logs every request's headers, the session
    token among them. Redacting at record creation (a record factory, not a handler filter)
    covers every logger and every handler, including handlers configured later; it costs
    nothing for levels that are off, since no record is made for them.
    """
    global _log_redaction_installed
    with _secret_lock:
        if _log_redaction_installed:
            return
        _log_redaction_installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logger's problem
            return record
        record.msg, record.args = redact(message), None
        return record

    logging.setLogRecordFactory(redacting_record)
