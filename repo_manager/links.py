"""Signed one-click links for a person's decision on an analysis (approve, reject, resume).

A link names the model, the canary version, the action and an expiry, with a random nonce,
and carries an HMAC-SHA256 of them with a key only the long-running manager holds
(``--link-key FILE``): a chat message can carry it, and whoever clicks it acts once.
``LinkSigner.check`` refuses, in one line each, a forged or altered link, an expired one,
one for a canary that is no longer the canary, and one already used (its nonce is kept in
``used_links_key``, written under the model's lock by the caller).

HMAC rather than a signature scheme: the manager both signs and verifies, so a shared
secret suffices and the standard library has it.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repo_manager.errors import InvalidInputError, RepoManagerError
from repo_manager.names import validate_model_name
from repo_manager.storage import Storage

__all__ = [
    "ACTIONS",
    "DecisionPages",
    "Link",
    "LinkRefusedError",
    "LinkSigner",
    "claim",
    "used_links_key",
]

#: The decisions a link may carry (``Approvals`` methods).
ACTIONS = ("approve", "reject", "resume")
#: Nonces of used links kept per model (links expire long before this many are used).
USED_KEPT = 1000
_MIN_KEY_BYTES = 16


class LinkRefusedError(RepoManagerError):
    """A link that is forged, altered, expired, used, or for another canary."""

    exit_code = 1


def used_links_key(model: str) -> str:
    """The storage key of the nonces of a model's used links (no model's own key ends so)."""
    return f".repo-manager.{model}.used-links"


@dataclass(kw_only=True, frozen=True)
class Link:
    """What a link asks for."""

    model: str
    version: str
    action: str
    expires: int
    nonce: str
    signature: str = ""

    def message(self) -> bytes:
        return "\n".join(
            (self.model, self.version, self.action, str(self.expires), self.nonce)
        ).encode()

    def path(self) -> str:
        query = urllib.parse.urlencode(
            {
                "version": self.version,
                "expires": self.expires,
                "nonce": self.nonce,
                "sig": self.signature,
            }
        )
        return f"/decide/{urllib.parse.quote(self.model)}/{self.action}?{query}"

    @classmethod
    def from_request(cls, path: str, query: dict[str, list[str]]) -> Link:
        """A link from ``/decide/MODEL/ACTION`` and its query (bad shape: refused)."""
        parts = path.removeprefix("/decide/").split("/")
        try:
            model, action = (urllib.parse.unquote(p) for p in parts)
            return cls(
                model=validate_model_name(model),
                action=action,
                version=query["version"][0],
                expires=int(query["expires"][0]),
                nonce=query["nonce"][0],
                signature=query["sig"][0],
            )
        except (ValueError, KeyError, IndexError, RepoManagerError):
            raise LinkRefusedError("not a decision link") from None


class LinkSigner:
    """Signs and checks links with one key."""

    def __init__(self, key: bytes, *, base_url: str, lifetime: float = 3600.0) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise InvalidInputError(f"the link key must be at least {_MIN_KEY_BYTES} bytes")
        self._key = key
        self.base_url = base_url.rstrip("/")
        self.lifetime = lifetime

    @classmethod
    def from_file(cls, path: Path, *, base_url: str, lifetime: float = 3600.0) -> LinkSigner:
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise InvalidInputError(f"cannot read the link key {path}: {exc.strerror}") from exc
        return cls(key, base_url=base_url, lifetime=lifetime)

    def _sign(self, link: Link) -> str:
        return hmac.new(self._key, link.message(), hashlib.sha256).hexdigest()

    def sign(self, model: str, version: str, action: str, *, now: float | None = None) -> str:
        """The URL of a new link (valid ``lifetime`` seconds from ``now``)."""
        if action not in ACTIONS:
            raise InvalidInputError(f"no link for {action!r}: one of {', '.join(ACTIONS)}")
        expires = int((time.time() if now is None else now) + self.lifetime)
        link = Link(
            model=model,
            version=version,
            action=action,
            expires=expires,
            nonce=secrets.token_urlsafe(12),
        )
        signed = Link(**{**link.__dict__, "signature": self._sign(link)})
        return self.base_url + signed.path()

    def check(self, link: Link, *, canary: str | None, now: float | None = None) -> None:
        """Refuse a link that must not act (see the module docstring); the used-nonce
        check is ``claim``'s."""
        if not hmac.compare_digest(self._sign(link), link.signature):
            raise LinkRefusedError("this link is not signed by this manager (forged or altered)")
        if link.action not in ACTIONS:
            raise LinkRefusedError(f"no such decision {link.action!r}")
        if (time.time() if now is None else now) > link.expires:
            raise LinkRefusedError("this link has expired")
        if link.version != canary:
            raise LinkRefusedError(
                f"this link is for version {link.version}; the canary of {link.model} is "
                f"{canary or 'none'} now"
            )


def claim(storage: Storage, link: Link) -> None:
    """Mark the link's nonce used, or refuse it when it was (call under the model's lock)."""
    key = used_links_key(link.model)
    data = storage.read_bytes(key)
    try:
        used = list(json.loads(data)) if data else []
    except ValueError:
        used = []
    if link.nonce in used:
        raise LinkRefusedError("this link was used already")
    used = [*used, link.nonce][-USED_KEPT:]
    storage.write_bytes_atomic(key, json.dumps(used).encode())


class DecisionPages:
    """``/decide/MODEL/ACTION?...`` on the manager's HTTP port: GET shows what the link
    would do with a button (chat apps fetch links to preview them: a GET must never act),
    POST acts once. Every refusal is one line with 403."""

    def __init__(
        self,
        signer: LinkSigner,
        *,
        act: Callable[[Link], str],
        canary_of: Callable[[str], str | None],
    ) -> None:
        """``act`` takes the decision (claiming the link) and says what was recorded;
        ``canary_of`` reads a model's canary now."""
        self.signer = signer
        self.act = act
        self.canary_of = canary_of

    def __call__(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, str, str]:
        try:
            link = Link.from_request(path, query)
            if method == "POST":
                return 200, "text/plain; charset=utf-8", self.act(link) + "\n"
            if method not in ("GET", "HEAD"):
                return 405, "text/plain; charset=utf-8", "GET or POST only\n"
            self.signer.check(link, canary=self.canary_of(link.model))
        except RepoManagerError as exc:
            return 403, "text/plain; charset=utf-8", f"refused: {exc}\n"
        what = html.escape(f"{link.action} canary {link.version} of {link.model}")
        target = html.escape(link.path(), quote=True)
        page = (
            f"<!doctype html><title>{what}</title><p>{what.capitalize()}?</p>"
            f'<form method="post" action="{target}"><button>{html.escape(link.action)}'
            "</button></form>"
        )
        return 200, "text/html; charset=utf-8", page
