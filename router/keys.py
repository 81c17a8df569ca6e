"""Client keys: who may call the proxy, and which public models each key may use.

The ring holds only SHA-256 digests, built at load. A presented key is hashed once and
looked up by digest, so the time taken depends on the digest, never on how much of the
secret was right. A key is known everywhere else (metrics, logs, errors) by its name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.errors import AUTHENTICATION, PERMISSION, RouterError
from router.limits import BudgetSpec, LimitSpec, budget_spec, limit_spec
from router.rules import Glob

if TYPE_CHECKING:
    from router.config import KeyConfig


@dataclass(frozen=True, slots=True)
class ClientKey:
    name: str
    models: Glob | None          # allow-list of public model names; None: every model
    limits: LimitSpec | None
    budget: BudgetSpec | None

    def allows(self, model: str) -> bool:
        return self.models is None or self.models(model)

    def check_models(self, names: Sequence[str]) -> None:
        """403 naming the first requested model this key may not use."""
        for i, name in enumerate(names):
            if not self.allows(name):
                raise RouterError(403, f"The key '{self.name}' may not use the model '{name}'.",
                                  type=PERMISSION, param="model" if i == 0 else "models",
                                  code="model_not_allowed")


# Errors are built per raise: a shared exception instance would collect every raising
# request's frames in its traceback and keep them alive.
def _missing() -> RouterError:
    return RouterError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.",
                       type=AUTHENTICATION, code="missing_api_key")


def _unknown() -> RouterError:
    return RouterError(401, "Incorrect API key provided.", type=AUTHENTICATION, code="invalid_api_key")


def digest(secret: str) -> bytes:
    """A header's non-UTF-8 bytes arrive as surrogates: hash them too (no such key matches),
    so a garbled key is a plain 401 and never an encoding error."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class KeyRing:
    """The keys of one routes table: digest -> ClientKey, plus lookup by name for `explain`."""

    def __init__(self, by_digest: Mapping[bytes, ClientKey], defined: Mapping[str, ClientKey]) -> None:
        self._by_digest = dict(by_digest)
        self.by_name = dict(defined)
        self.live = frozenset(k.name for k in by_digest.values())   # names whose secret is known

    def authenticate(self, authorization: str | None) -> ClientKey:
        token = bearer(authorization)
        if token is None:
            raise _missing()
        key = self._by_digest.get(digest(token))
        if key is None:
            raise _unknown()
        return key


def build_keyring(keys: Mapping[str, KeyConfig], environ: Mapping[str, str]
                  ) -> tuple[KeyRing, list[str], list[str]]:
    """(ring, problems, warnings). A key whose env var is unset cannot be used: a warning, and
    the section still turns authentication on, so the proxy fails closed rather than open."""
    problems: list[str] = []
    warnings: list[str] = []
    by_digest: dict[bytes, ClientKey] = {}
    defined: dict[str, ClientKey] = {}
    owner: dict[bytes, str] = {}
    for name, k in keys.items():
        key = ClientKey(name, Glob(k.models) if k.models is not None else None, limit_spec(k.limits),
                        budget_spec(k.budget))
        defined[name] = key
        if k.key_env is not None:
            secret = environ.get(k.key_env)
            if not secret:
                warnings.append(f"keys.{name}.key_env: environment variable {k.key_env} is not set;"
                                " this key cannot be used")
                continue
            d = digest(secret.strip())
        else:
            d = bytes.fromhex(k.key_sha256 or "")
        if d in owner:
            problems.append(f"keys.{name}: the same secret as keys.{owner[d]}; every key needs its own")
            continue
        owner[d] = name
        by_digest[d] = key
    return KeyRing(by_digest, defined), problems, warnings
