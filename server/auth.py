"""Credentials: argon2id password hashes and HS256 JWTs.

Hashing is deliberately slow, so it runs in the default thread pool, never on
the event loop.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import argon2
import jwt

from hubbub.server.config import PasswordConfig

ALGORITHM = "HS256"


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


class Tokens:
    def __init__(self, secret: str, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self.ttl_seconds = ttl_seconds

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
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires * 1000

    def verify(self, token: str) -> int:
        """The user id of a valid token; InvalidToken otherwise."""
        return self.verify_session(token)[0]

    def verify_session(self, token: str) -> tuple[int, int]:
        """The user id and token generation of a valid token; InvalidToken otherwise.

        A token issued before generations existed has no ``gen`` claim: it is of
        generation 0, which every user has until their first password change or
        "log out everywhere", so it stays valid until then."""
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
            return int(claims["sub"]), generation
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidToken(str(exc)) from None


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
