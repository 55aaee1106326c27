"""Credentials: argon2id password hashes and HS256 JWTs.

Hashing is deliberately slow, so it runs in the default thread pool, never on
the event loop.

Tokens are signed and verified by pyjwt. Two things keep a reconnect storm
from paying for the same work again and again (BENCHMARKS.md, "storm-ready2"):

- pyjwt checks the HMAC secret (``prepare_key``: is it a PEM, SSH, DER or JWK
  key?) at every encode and decode; the answer for one secret never changes,
  so ``_CheckedHMAC`` keeps it for the secrets it has accepted.
- ``Tokens`` remembers the claims of the tokens it issued or verified, by the
  exact token string (``_Claims``, at most ``TOKEN_CACHE_SIZE``). A token
  presented again is not decoded again; see ``Tokens.verify_session`` for
  what is still checked at every use.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import argon2
import jwt
from jwt.algorithms import HMACAlgorithm

from hubbub.server.config import PasswordConfig

ALGORITHM = "HS256"
TOKEN_CACHE_SIZE = 20_000
"""Tokens whose claims ``Tokens`` keeps (about 0.5 KB each with the string, 11 MB at most):
enough for every client of a storm on one instance to find the token it was
last given, or presented last, without decoding it again. The oldest goes first."""
_CHECKED_KEYS_SIZE = 4
"""HMAC secrets ``_CheckedHMAC`` remembers as accepted: a server has one."""


class _CheckedHMAC(HMACAlgorithm):
    """pyjwt's HS256 with the secret's check done once per secret, not at every call.

    ``HMACAlgorithm.prepare_key`` refuses asymmetric keys and JWKs as HMAC
    secrets and returns the secret's bytes: a pure function of the key. Only
    an accepted key is remembered (by its exact bytes), so a refused one is
    refused at every call, as before."""

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._accepted: dict[bytes | str, bytes] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._accepted.get(key)
        if prepared is None:
            prepared = super().prepare_key(key)
            if len(self._accepted) < _CHECKED_KEYS_SIZE:
                self._accepted[key] = prepared
        return prepared


def _install_checked_hmac() -> None:
    """Make pyjwt's HS256 (``jwt.encode``/``jwt.decode``) the checked-once kind, through its public registry."""
    jwt.unregister_algorithm(ALGORITHM)
    jwt.register_algorithm(ALGORITHM, _CheckedHMAC())


_install_checked_hmac()


class Passwords:
    def __init__(self, config: PasswordConfig) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
            type=argon2.Type.ID,
        )
        # Verified against when the username does not exist, so that a
        # missing user costs the same time as a wrong password.
        self._decoy = self._hasher.hash(secrets.token_hex(16))

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(
            None, self._verify, password_hash or self._decoy, password, password_hash is not None
        )

    def _verify(self, password_hash: str, password: str, real: bool) -> bool:
        try:
            return self._hasher.verify(password_hash, password) and real
        except (argon2.exceptions.VerifyMismatchError, argon2.exceptions.InvalidHashError):
            return False


class InvalidToken(Exception):
    """The token is malformed, forged, expired or for another issuer/audience."""


class _Claims(NamedTuple):
    """What ``verify_session`` needs of a token it has already decoded."""

    user_id: int
    generation: int
    issued_at: int
    expires_at: int


class Tokens:
    def __init__(self, secret: str, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self.ttl_seconds = ttl_seconds
        self._known: OrderedDict[str, _Claims] = OrderedDict()
        """Tokens issued or verified here, by their exact string (``TOKEN_CACHE_SIZE``)."""
        self.cache_hits = 0
        """Tokens verified from ``_known`` rather than decoded (tests, BENCHMARKS.md)."""

    def issue(self, user_id: int, now: float | None = None, *, generation: int = 0) -> tuple[str, int]:
        """A signed token for the user and its expiry in epoch milliseconds.

        ``generation`` is the user's token generation (``UserRecord.token_generation``):
        ``auth`` accepts the token only while it is still the user's."""
        issued = int(now if now is not None else time.time())
        expires = issued + self.ttl_seconds
        claims = {
            "sub": str(user_id),
            "iat": issued,
            "exp": expires,
            "iss": self._issuer,
            "aud": self._audience,
            # iat has one-second resolution: without a random id, two tokens of one
            # user within a second were byte-identical, though the protocol promises
            # a fresh one. Not required on verify, so earlier tokens stay valid.
            "jti": secrets.token_urlsafe(16),
            "gen": generation,
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        self._remember(token, _Claims(user_id, generation, issued, expires))
        return token, expires * 1000

    def verify(self, token: str) -> int:
        """The user id of a valid token; InvalidToken otherwise."""
        return self.verify_session(token)[0]

    def verify_session(self, token: str) -> tuple[int, int]:
        """The user id and token generation of a valid token; InvalidToken otherwise.

        A token issued before generations existed has no ``gen`` claim: it is of
        generation 0, which every user has until their first password change or
        "log out everywhere", so it stays valid until then.

        A token this object issued or verified before is not decoded again: it
        was signed with this secret (the cache is keyed by the whole string, so
        a token that differs in any byte, its signature included, misses and is
        verified in full), and its issuer, audience and claims cannot have
        changed. What can change is checked at every use, exactly as pyjwt does:
        ``iat`` not in the future and ``exp`` not reached (else it is decoded in
        full, which refuses it with pyjwt's own message). The generation is
        returned, not judged: ``auth`` compares it with the user's row at every
        use, so a token of an ended generation (password change, "log out
        everywhere", disabling) is refused whether it was cached or not."""
        known = self._known.get(token)
        if known is not None:
            now = time.time()
            if known.issued_at <= now < known.expires_at:
                self._known.move_to_end(token)
                self.cache_hits += 1
                return known.user_id, known.generation
            del self._known[token]
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # pinned: never trust the token's own "alg"
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
            generation = claims.get("gen", 0)
            if not isinstance(generation, int):
                raise ValueError("gen is not an integer")
            user_id = int(claims["sub"])
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidToken(str(exc)) from None
        issued, expires = claims["iat"], claims["exp"]
        # Only the shape this server issues is remembered: a token with "nbf",
        # or with times that are not integers, is verified in full every time.
        if "nbf" not in claims and type(issued) is int and type(expires) is int:
            self._remember(token, _Claims(user_id, generation, issued, expires))
        return user_id, generation

    def _remember(self, token: str, claims: _Claims) -> None:
        known = self._known
        known[token] = claims
        known.move_to_end(token)
        if len(known) > TOKEN_CACHE_SIZE:
            known.popitem(last=False)


def load_or_create_dev_secret(data_dir: Path) -> str:
    """The dev JWT secret kept beside the embedded store, created on first use."""
    path = data_dir / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret
