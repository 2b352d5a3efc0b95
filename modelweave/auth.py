"""Token authentication, transport-free: token files, hashing, constant-time verification.

A token file holds one ``name:token`` per line (blank lines and ``#`` comments are
skipped). A name may appear on several lines, so a client's token can be rotated by
adding the new one, moving clients over, then deleting the old line.

Only SHA-256 digests of the tokens leave the file: the Serve config, the graph spec
and the replicas never hold a token itself. A fast, unsalted hash is enough here
because the tokens are long random secrets (at least :data:`MIN_TOKEN_CHARS`
characters, e.g. ``python -c 'import secrets; print(secrets.token_urlsafe(32))'``);
there is no dictionary to guess from, unlike passwords, which would need a slow
salted hash (scrypt, argon2).

HTTP and gRPC both pass the raw ``authorization`` value (``Bearer <token>``) to
:meth:`TokenVerifier.verify`; only the ingress knows where that value came from.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import pathlib
import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from modelweave.errors import InvalidArgument, Unauthenticated

#: Token names appear in metrics labels, traces and logs, so they are short and plain.
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(TOKEN_NAME_PATTERN)
#: Shortest accepted token: short tokens could be guessed from their unsalted digest.
MIN_TOKEN_CHARS = 16
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: fits an HTTP header
_BEARER = "bearer "
#: Longest ``authorization`` value examined (longer ones are refused without hashing).
MAX_AUTHORIZATION_CHARS = 1024


class TokenDigest(BaseModel):
    """One accepted token: the client's name and the SHA-256 hex digest of its token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=TOKEN_NAME_PATTERN)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")


class AuthSettings(BaseModel):
    """Token authentication of a graph's ingress (``ingress.auth`` in the graph file).

    ``modelweave run/build --auth-tokens FILE`` fills it from a token file; only digests
    are stored, so the graph spec and the Serve config can be shown without leaking tokens.
    """

    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenDigest] = Field(..., min_length=1)


def hash_token(token: str) -> str:
    """Returns the SHA-256 hex digest of a token (what configs store instead of the token)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_token_file(text: str, source: str = "<tokens>") -> list[TokenDigest]:
    """Parses ``name:token`` lines into digests.

    Raises:
        InvalidArgument: naming the line (never echoing the token) when a line is malformed,
            a token is too short, or the file holds no token.
    """
    digests: list[TokenDigest] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        where = f"{source} line {number}"
        if not sep or not token:
            raise InvalidArgument(f"{where}: expected 'name:token'")
        if not _NAME_RE.match(name):
            raise InvalidArgument(f"{where}: token name {name!r} must match {TOKEN_NAME_PATTERN}")
        if len(token) < MIN_TOKEN_CHARS or not _TOKEN_RE.match(token):
            raise InvalidArgument(f"{where}: the token must be at least {MIN_TOKEN_CHARS} printable ASCII "
                                  "characters without spaces (e.g. secrets.token_urlsafe(32))")
        digest = hash_token(token)
        if digest in seen:
            raise InvalidArgument(f"{where}: the same token appears twice")
        seen.add(digest)
        digests.append(TokenDigest(name=name, sha256=digest))
    if not digests:
        raise InvalidArgument(f"{source}: no 'name:token' line")
    return digests


def load_token_file(path: str | pathlib.Path) -> list[TokenDigest]:
    """Reads and parses a token file.

    Raises:
        InvalidArgument: when the file cannot be read or is malformed.
    """
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read token file {p}: {exc}") from None
    return parse_token_file(text, str(p))


class TokenVerifier:
    """Checks ``authorization`` values against the configured digests.

    Args:
        digests: Accepted tokens (name and SHA-256 digest); at least one.
    """

    def __init__(self, digests: Iterable[TokenDigest]) -> None:
        self._digests = [(d.name, bytes.fromhex(d.sha256)) for d in digests]
        if not self._digests:
            raise InvalidArgument("token authentication needs at least one token")

    def verify(self, authorization: str | None) -> str:
        """Returns the caller's token name for a valid ``Bearer <token>`` value.

        Every configured digest is compared with ``hmac.compare_digest`` (no early exit),
        so the time taken does not depend on which digest matched or how much of it did.

        Raises:
            Unauthenticated: the value is missing, not a bearer token, or matches no token.
        """
        if not authorization:
            raise Unauthenticated("authentication required: send 'authorization: Bearer <token>'")
        if len(authorization) > MAX_AUTHORIZATION_CHARS or not authorization.lower().startswith(_BEARER):
            raise Unauthenticated("the authorization value must be 'Bearer <token>'")
        presented = hashlib.sha256(authorization[len(_BEARER):].strip().encode("utf-8", "replace")).digest()
        matched = ""
        for name, digest in self._digests:
            if hmac.compare_digest(presented, digest) and not matched:
                matched = name
        if not matched:
            raise Unauthenticated("the token is not valid")
        return matched


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to a public address


def exposure_problem(host: str, *, authenticated: bool, insecure: bool) -> str | None:
    """The rule every generated config follows: a non-loopback address needs tokens.

    Returns:
        None when serving on ``host`` is allowed, else what to do about it.
    """
    if is_loopback(host) or authenticated or insecure:
        return None
    return (f"--host {host} accepts connections from other machines, and the graph would answer anyone: "
            "pass --auth-tokens FILE (one 'name:token' line per client), or --insecure to serve without "
            "authentication on purpose (behind a private network or an authenticating proxy)")
