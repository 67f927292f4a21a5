"""Passwords (scrypt, memory-hard), signed session cookies, CSRF tokens and the login rate limit.

Nothing here logs: a password, a session or its key never reaches a log line or an error message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import deque
from pathlib import Path

# scrypt with N=2^15, r=8: 32 MiB of memory and about 0.1 s a check, which is what makes a stolen table slow
# to attack; the parameters are stored with each hash, so they can be raised later
_N, _R, _P = 1 << 15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("an empty password")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=_MAXMEM, dklen=len(digest) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


_DUMMY = None


def waste_a_check(password: str) -> None:
    """As slow as a real check: a login with an unknown name takes as long as one with a wrong password."""
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = hash_password("not a password")
    check_password(password, _DUMMY)


def session_key(env: dict[str, str], state_dir: Path) -> bytes:
    """The key that signs sessions: ``LEDGER_DESK_SECRET`` when set, else a random key kept in
    ``<state_dir>/desk.key``, created readable by its owner only."""
    from ..config import ConfigError

    if env.get("LEDGER_DESK_SECRET"):
        if len(env["LEDGER_DESK_SECRET"]) < 32:
            raise ConfigError("LEDGER_DESK_SECRET is shorter than 32 characters: too weak to sign sessions")
        return hashlib.sha256(env["LEDGER_DESK_SECRET"].encode()).digest()
    from ..settings import secret_once

    path = state_dir / "desk.key"
    secret_once(path, lambda: secrets.token_hex(32))
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ConfigError(f"{path}: not a 32-byte hex key (remove it to have a new one made, which ends every session)")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """A session is ``payload.signature`` in an HttpOnly, SameSite=Strict cookie: the payload names the user,
    the expiry and the session's CSRF token; HMAC-SHA256 under the desk's key signs it."""

    cookie = "desk_session"

    def __init__(self, key: bytes, hours: float) -> None:
        self.key, self.seconds = key, int(hours * 3600)

    def issue(self, user: str | None, epoch: str | None = None, now: float | None = None) -> tuple[str, str]:
        """(cookie value, CSRF token) of a new session (``user`` None: before login); ``epoch``: the user's
        session epoch, which ends the session when it changes (logout, the user removed and added again)."""
        csrf = secrets.token_urlsafe(24)
        now = time.time() if now is None else now
        payload = _b64(json.dumps({"u": user, "e": epoch, "exp": int(now) + self.seconds, "csrf": csrf},
                                  separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", csrf

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def read(self, value: str | None, now: float | None = None) -> dict | None:
        """The session's ``{"u", "exp", "csrf"}``, or None when absent, forged, altered or expired."""
        if not value or value.count(".") != 1 or len(value) > 1024:
            return None
        payload, sig = value.split(".")
        if not hmac.compare_digest(self._sign(payload).encode(), sig.encode("utf-8", "replace")):
            return None
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or not isinstance(data.get("csrf"), str):
            return None
        if data["exp"] <= (time.time() if now is None else now):
            return None
        return data


def csrf_ok(session: dict | None, token: str | None) -> bool:
    return bool(session and token and hmac.compare_digest(session["csrf"].encode(), token.encode("utf-8", "replace")))


class RateLimit:
    """At most ``attempts`` failed logins per (client, name) in ``window`` seconds."""

    def __init__(self, attempts: int = 5, window: float = 900.0) -> None:
        self.attempts, self.window = attempts, window
        self.failures: dict[tuple[str, str], deque] = {}

    def blocked(self, who: tuple[str, str], now: float | None = None) -> float:
        """Seconds until ``who`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        q = self.failures.get(who)
        while q and q[0] <= now - self.window:
            q.popleft()
        if q is not None and not q:
            del self.failures[who]
        if q and len(q) >= self.attempts:
            return q[0] + self.window - now
        return 0.0

    def failed(self, who: tuple[str, str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self.failures) > 100_000:  # a flood of made-up names: forget the stalest, never everyone's
            for key in sorted(self.failures, key=lambda k: self.failures[k][-1])[:50_000]:
                del self.failures[key]
        self.failures.setdefault(who, deque()).append(now)

    def succeeded(self, who: tuple[str, str]) -> None:
        self.failures.pop(who, None)
