"""Connection strings carry passwords: what of them may ever be shown.

Every URL setting (`DATABASE_URL`, `READONLY_DATABASE_URL`, `SOURCE_DATABASE_URL`, `DAGSTER_PG_URL`,
`NOTIFY_WEBHOOK_URL`) is checked once, in `resources.settings`, by the functions here, and an error names
the setting and what is wrong, never the value. Where a driver's own message has to be passed on (a
server that refuses a login, say), `scrub` removes whatever in it could be the password, including from
strings no parser accepts: a driver that cannot parse a string often echoes part of it.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

MASK = "***"
_PASSWORD_PARAMETER = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^\s&;]*)", re.IGNORECASE)


class UnusableConnectionString(ValueError):
    """A connection string that cannot be used; the message says why, never what it holds. Messages of the
    checks below complete a sentence whose subject is the setting: "DATABASE_URL cannot be parsed: ..."."""


def credential_fragments(raw: str) -> list[str]:
    """Every part of `raw` that may be a password or a piece of one, longest first, whatever its shape:
    the userinfo's password of a URL (up to the last `@`, decoded and not), the pieces a parser that
    splits at the first `@` would take for a host, and every `password=` value."""
    found: set[str] = set()
    _scheme, separator, rest = raw.partition("://")
    if separator and "@" in rest:
        userinfo = rest[:rest.rfind("@")]
        _user, colon, password = userinfo.partition(":")
        if colon and password:
            # and the pieces a parser that splits at an unencoded '@' or '/' would show as a host or database
            found |= {password, unquote(password), *(piece for piece in re.split("[@/]", password) if len(piece) >= 4)}
    for match in _PASSWORD_PARAMETER.finditer(raw):
        value = match.group(1).strip("'\"")
        if value:
            found |= {value, unquote(value)}
    return sorted((fragment for fragment in found if fragment), key=len, reverse=True)


def scrub(text: str, *connection_strings: str | None, passwords: tuple[str | None, ...] = ()) -> str:
    """`text` with every credential fragment of `connection_strings`, and every one of `passwords`, masked."""
    fragments = {f for raw in connection_strings if raw for f in credential_fragments(raw)}
    fragments |= {p for p in passwords if p}
    for fragment in sorted(fragments, key=len, reverse=True):
        text = text.replace(fragment, MASK)
    return text


def _refuse_unencoded_userinfo(rest: str) -> None:
    """A user or password holding a raw '@' or '/' is split elsewhere by every URL parser (libpq would take the
    password for a port and the rest for the database name, and show them): refused, before any parser."""
    authority_and_path = rest.split("?", 1)[0].split("#", 1)[0]
    at = authority_and_path.rfind("@")
    if at >= 0 and any(c in authority_and_path[:at] for c in "@/"):
        raise UnusableConnectionString("holds an unencoded '@' or '/' in its user or password: percent-encode them "
                                       "(%40, %2F)")


def check_postgres_url(raw: str) -> dict[str, str]:
    """The libpq parameters of a PostgreSQL connection string (`postgresql://`, `postgres://`, SQLAlchemy's
    `postgresql+psycopg://` or `key=value` pairs); `UnusableConnectionString` when it cannot be parsed."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    scheme, separator, rest = raw.partition("://")
    if separator:
        if scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
            raise UnusableConnectionString("is not a PostgreSQL URL: it must start with postgresql:// or "
                                           "postgres://, or be libpq key=value pairs")
        _refuse_unencoded_userinfo(rest)
        raw = f"postgresql://{rest}"
    try:
        return conninfo_to_dict(raw)
    except (ProgrammingError, ValueError):
        raise UnusableConnectionString(
            "cannot be parsed: use postgresql://user:password@host:port/dbname (percent-encode characters such "
            "as @ : / ? # % and spaces in the password) or libpq key=value pairs") from None


def check_sqlalchemy_url(raw: str):
    """A SQLAlchemy URL object for `raw`; `UnusableConnectionString` when it cannot be parsed, or when its
    userinfo holds an unencoded `@` (SQLAlchemy would take the password's end for the host)."""
    import sqlalchemy as sa

    _scheme, separator, rest = raw.partition("://")
    if separator:
        _refuse_unencoded_userinfo(rest)
    try:
        url = sa.make_url(raw)
        url.port  # noqa: B018 - a non-numeric port fails here
    except (sa.exc.ArgumentError, ValueError):
        raise UnusableConnectionString(
            "cannot be parsed as a SQLAlchemy URL dialect+driver://user:password@host:port/database (percent-encode "
            "special characters in the password)") from None
    return url


def check_postgres_sqlalchemy_url(raw: str) -> None:
    """A PostgreSQL URL that SQLAlchemy reads too (dagster-postgres' `postgres_url`)."""
    check_postgres_url(raw)
    check_sqlalchemy_url(raw)


def check_http_url(raw: str) -> None:
    """An http(s) URL with a host, without spaces or control characters (as urllib will send it)."""
    try:
        parts = urlsplit(raw)
        usable = parts.scheme in ("http", "https") and parts.hostname and parts.port is not False
    except ValueError:  # an invalid IPv6 host or port
        usable = False
    if not usable or any(c.isspace() or ord(c) < 32 for c in raw):
        raise UnusableConnectionString("must be an http:// or https:// URL with a host and no spaces")


# --- connecting (no Dagster here: the Firehose Lambda connects through these too) ------------------------


class DatabaseUnavailableError(RuntimeError):
    """The database could not be reached; the message names it without its password."""


def connect_or_explain(conninfo: str | None = None, *, describe: str, **kwargs) -> psycopg.Connection:
    """psycopg.connect, turning failures into errors that name the target safely: a connection string that
    cannot be parsed is `UnusableConnectionString` without the driver's message (which echoes parts of it,
    password included); a refused connection is `DatabaseUnavailableError` with the password masked."""
    if conninfo is not None:
        try:
            check_postgres_url(conninfo)
        except UnusableConnectionString as exc:
            raise UnusableConnectionString(f"cannot connect to PostgreSQL {describe}: its connection string {exc}") from None
    try:
        if conninfo is None:
            return psycopg.connect(**kwargs)
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.OperationalError as exc:
        # libpq's message spans lines ("connection to server at ... failed: Connection refused", then a hint):
        # all of them, on one line
        reason = " ".join(line.strip() for line in str(exc).strip().splitlines()) or type(exc).__name__
        message = scrub(f"cannot connect to PostgreSQL {describe}: {reason}", conninfo,
                        passwords=(kwargs.get("password"),))
        raise DatabaseUnavailableError(message) from None
    except psycopg.ProgrammingError:
        raise UnusableConnectionString(f"the connection parameters of {describe} are not valid for libpq (not shown: "
                                       "they may carry a password)") from None


class SecretConfigurationError(ValueError):
    """The Secrets Manager secret is missing, unreadable or lacks a key; names the secret and key only."""


SECRET_KEYS_REQUIRED = ("host", "username", "password")


def credentials_from_secret(secret_id: str, secret_string: str | None) -> dict[str, Any]:
    """libpq keyword arguments from an RDS-style secret; errors name the secret and key, never values."""
    if not secret_string:
        raise SecretConfigurationError(f"Secrets Manager secret {secret_id!r} has no SecretString (binary secrets are not supported)")
    try:
        payload = json.loads(secret_string)
    except json.JSONDecodeError:
        raise SecretConfigurationError(f"Secrets Manager secret {secret_id!r} is not a JSON object") from None
    if not isinstance(payload, dict):
        raise SecretConfigurationError(f"Secrets Manager secret {secret_id!r} is not a JSON object")
    missing = [key for key in SECRET_KEYS_REQUIRED if not payload.get(key)]
    if not (payload.get("dbname") or payload.get("database")):
        missing.append("dbname (or database)")
    if missing:
        raise SecretConfigurationError(
            f"Secrets Manager secret {secret_id!r} is missing key(s) {', '.join(repr(m) for m in missing)}; "
            "it needs host, port (optional, 5432), username, password and dbname or database"
        )
    port = payload.get("port", 5432)
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise SecretConfigurationError(f"Secrets Manager secret {secret_id!r} has a non-numeric 'port'") from None
    return {
        "host": str(payload["host"]),
        "port": port,
        "user": str(payload["username"]),
        "password": str(payload["password"]),
        "dbname": str(payload.get("dbname") or payload["database"]),
    }
