"""Ray token authentication for the clients djray starts: a driver attaching to a cluster and the job API client.

Since Ray 2.5x a cluster started with `ray start --head` authenticates with a token when one is present on the head
(`~/.ray/auth_token`, written by `ray get-auth-token --generate`, or `RAY_AUTH_TOKEN(_PATH)`); `ray.init()` of a new
local instance turns it on by default. A client must then present the same token. Ray's own clients only do so when
`RAY_AUTH_MODE=token` is set in their environment, even when the token sits in the standard places; djray looks in
those places itself, in Ray's order:

1. `RAY_AUTH_TOKEN` (the token itself),
2. `RAY_AUTH_TOKEN_PATH` (a file holding it),
3. `~/.ray/auth_token`.

With a token found and `RAY_AUTH_MODE` unset, `enable_for_driver` turns token mode on for this process before
`ray.init(address=...)` (what Ray itself does for a local cluster it finds), and `http_headers` gives the job API
client its `Authorization` header. An explicit `RAY_AUTH_MODE` is respected. When the cluster refuses, `failure_line`
says in one line what is missing and how to provide it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
MODE_ENV = "RAY_AUTH_MODE"
HOW_TO_PROVIDE = (f"set {TOKEN_ENV} to the cluster's token, or {TOKEN_PATH_ENV} to a file holding it, or put it in "
                  "~/.ray/auth_token (print it on the head node with `ray get-auth-token`)")


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)  # never printed
    source: str  # where it came from, for messages


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def find_token(environ: Mapping[str, str] | None = None) -> Token | None:
    """The token a client should present, from the first standard place that has one, or None."""
    environ = os.environ if environ is None else environ
    value = environ.get(TOKEN_ENV, "").strip()
    if value:
        return Token(value, TOKEN_ENV)
    path = environ.get(TOKEN_PATH_ENV)
    if path:
        return _read(Path(path).expanduser(), f"{TOKEN_PATH_ENV} ({path})")
    return _read(default_token_path(), "~/.ray/auth_token")


def _read(path: Path, source: str) -> Token | None:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Token(value, source) if value else None


def enable_for_driver() -> Token | None:
    """Before `ray.init(address=...)`: with a token available and RAY_AUTH_MODE unset, switch this process (and the
    processes it starts) to token mode, so the driver presents the token. Returns the token found."""
    token = find_token()
    if token is not None and MODE_ENV not in os.environ:
        os.environ[MODE_ENV] = "token"
        try:  # Ray caches its configuration (the auth mode included) per process: re-read it from the environment
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):
            pass
    return token


def http_headers(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The job API client's headers: the token as a bearer token, unless RAY_AUTH_MODE=disabled says not to."""
    environ = os.environ if environ is None else environ
    if environ.get(MODE_ENV, "").lower() == "disabled":
        return None
    token = find_token(environ)
    return {"Authorization": f"Bearer {token.value}"} if token else None


def is_auth_error(e: BaseException) -> bool:
    """Ray's AuthenticationError, also when wrapped (ray.init raises ConnectionError from it)."""
    seen = 0
    while e is not None and seen < 10:
        if type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def failure_line(address: str, environ: Mapping[str, str] | None = None) -> str:
    """One line: why the cluster at `address` refused this client, and how to provide the token."""
    environ = os.environ if environ is None else environ
    where = f"the Ray cluster at {address} requires token authentication"
    if environ.get(MODE_ENV, "").lower() == "disabled":
        return (f"{where}, but {MODE_ENV}=disabled is set here: unset it (or set {MODE_ENV}=token) and "
                f"{HOW_TO_PROVIDE}")
    token = find_token(environ)
    named = environ.get(TOKEN_PATH_ENV)
    if token is None and named and not environ.get(TOKEN_ENV, "").strip():
        return f"{where} and {TOKEN_PATH_ENV} names {named}, which holds no readable token: {HOW_TO_PROVIDE}"
    if token is None:
        return f"{where} and no token was found here: {HOW_TO_PROVIDE}"
    return (f"{where} and refused the token from {token.source}: it is not this cluster's token; "
            f"{HOW_TO_PROVIDE}")
