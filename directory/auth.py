"""Authentication (TokenReview) and authorisation (``directory.access``) at the I/O edge.

The caller's ``Authorization: Bearer`` token is reviewed (TokenReview). Whether
its user may read a map is ``directory.access``'s rule: a service account in
the StatefulSet's own namespace needs no review; anyone else needs
``shardmaps.shard.io`` (or the old direct-watch rights) by SubjectAccessReview.
Results are cached for ``ttl`` seconds (denials and failed tokens for
``deny_ttl``), bounded in size, keyed by a hash of the token, never the token
itself.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from directory import access, metrics
from directory.access import Need
from directory.maps import MapKey
from directory.ttlcache import TtlCache

T = TypeVar("T")


@dataclass(frozen=True)
class User:
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


class Denied(Exception):
    """401 (no or bad token), 403 (missing permissions) or 503 (review failed)."""

    def __init__(self, status: int, code: str, message: str, missing: list[str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.missing = missing or []

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.missing:
            out["missing"] = self.missing
        return out


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Auth:
    def __init__(self, api: Any, ttl: float, deny_ttl: float, size: int) -> None:
        from kubernetes import client

        self.authn = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        self.ttl, self.deny_ttl = ttl, deny_ttl
        self.tokens: TtlCache[User | str] = TtlCache(size)
        self.grants: TtlCache[tuple[str, ...]] = TtlCache(size)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="review")

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def authenticate(self, header: str | None) -> User:
        token = bearer(header)
        if token is None:
            raise Denied(401, "unauthenticated",
                         "no 'Authorization: Bearer <service-account token>' header")
        digest = hashlib.sha256(token.encode()).hexdigest()
        result = await self.tokens.get_or_load(
            digest, lambda: self._run(lambda: self._token_review(token)),
            lambda r: self.ttl if isinstance(r, User) else self.deny_ttl)
        if isinstance(result, str):
            raise Denied(401, "unauthenticated", f"the token was not accepted: {result}")
        return result

    async def authorize(self, user: User, key: MapKey, verb: str) -> None:
        """``verb`` is ``watch`` (the stream) or ``get`` (resolve, maps). Raises
        ``Denied`` 403 naming the missing ``shardmaps`` permission."""
        if access.same_namespace(user.username, user.groups, key.namespace):
            return  # access.py says why no review is needed

        async def load() -> tuple[str, ...]:
            primary, *fallbacks = access.alternatives(verb, key.statefulset)
            allowed = await self._review_all(user, key, primary)
            if not all(allowed.values()):
                # Only a caller without the shardmaps grant pays for the old rights' reviews.
                for option in fallbacks:
                    allowed |= await self._review_all(user, key, option)
            return access.missing(verb, key.statefulset, key.namespace, allowed)

        missing = await self.grants.get_or_load(
            (user, key, verb), load, lambda m: self.deny_ttl if m else self.ttl)
        if missing:
            raise Denied(403, "forbidden",
                         f"{user.username} may not read the map of statefulset {key}: "
                         f"it cannot {'; '.join(missing)} (bind ClusterRole "
                         f"{access.READER_CLUSTERROLE} in namespace '{key.namespace}')",
                         list(missing))

    async def _review_all(self, user: User, key: MapKey, wanted: tuple[Need, ...]
                          ) -> dict[Need, bool]:
        allowed = await asyncio.gather(*(self._run(partial(self._allowed, user, key, n))
                                         for n in wanted))
        return dict(zip(wanted, allowed, strict=True))

    # --- the reviews (executor threads) ----------------------------------------

    def _token_review(self, token: str) -> User | str:
        from kubernetes import client

        try:
            review = self.authn.create_token_review(
                client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)))
        except Exception as err:
            metrics.REVIEWS.labels("token", "error").inc()
            raise Denied(503, "review_failed",
                         f"TokenReview failed: {type(err).__name__}: {err}") from None
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            metrics.REVIEWS.labels("token", "rejected").inc()
            return (status.error if status is not None else None) or "not authenticated"
        metrics.REVIEWS.labels("token", "accepted").inc()
        u = status.user
        extra = tuple(sorted((k, tuple(v)) for k, v in (u.extra or {}).items()))
        return User(u.username or "", u.uid or "", tuple(u.groups or ()), extra)

    def _allowed(self, user: User, key: MapKey, need: Need) -> bool:
        from kubernetes import client

        spec = client.V1SubjectAccessReviewSpec(
            user=user.username, uid=user.uid or None, groups=list(user.groups),
            extra={k: list(v) for k, v in user.extra} or None,
            resource_attributes=client.V1ResourceAttributes(
                namespace=key.namespace, verb=need.verb, group=need.group,
                resource=need.resource, name=need.name))
        try:
            review = self.authz.create_subject_access_review(
                client.V1SubjectAccessReview(spec=spec))
        except Exception as err:
            metrics.REVIEWS.labels("access", "error").inc()
            raise Denied(503, "review_failed",
                         f"SubjectAccessReview failed: {type(err).__name__}: {err}") from None
        allowed = bool(review.status is not None and review.status.allowed)
        metrics.REVIEWS.labels("access", "allowed" if allowed else "denied").inc()
        return allowed
