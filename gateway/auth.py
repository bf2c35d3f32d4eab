"""Bearer-token auth: one token for detectors, another for operators, compared in constant time.

A valid token used on the other role's endpoints gets 403 (the caller is known but not
allowed); a missing or unknown token gets 401. With no token configured at all the
gateway only runs when explicitly started with `--insecure-no-auth`.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import StrEnum

from fastapi import HTTPException, status

DETECTOR_TOKEN_ENV = "MEDKIT_DETECTOR_TOKEN"  # noqa: S105 (an env var name)
OPERATOR_TOKEN_ENV = "MEDKIT_OPERATOR_TOKEN"  # noqa: S105 (an env var name)


class Role(StrEnum):
    """Who may call an endpoint."""

    DETECTOR = "detector"
    OPERATOR = "operator"


_TOKEN_ENV = {Role.DETECTOR: DETECTOR_TOKEN_ENV, Role.OPERATOR: OPERATOR_TOKEN_ENV}


def token_from_env(name: str) -> str | None:
    """The token in environment variable `name` without surrounding whitespace, or None when
    unset or blank. A token put there from a file (a Kubernetes secret, an env file written by
    `echo`) ends in a newline that no client sends: Alertmanager's `credentials_file` and the
    `Authorization` header parsing both drop it, so kept, it would refuse every request."""
    return os.environ.get(name, "").strip() or None


class AuthConfigError(ValueError):
    """The token configuration is unsafe or contradictory; the gateway must not start."""


@dataclass(frozen=True, repr=False)
class AuthConfig:
    """The configured tokens (never printed: repr is disabled) or the explicit no-auth mode."""

    detector_token: str | None = None
    operator_token: str | None = None
    insecure: bool = False

    @classmethod
    def from_env(cls, insecure: bool = False) -> AuthConfig:
        """Tokens from MEDKIT_DETECTOR_TOKEN / MEDKIT_OPERATOR_TOKEN (see token_from_env); validated."""
        config = cls(token_from_env(DETECTOR_TOKEN_ENV), token_from_env(OPERATOR_TOKEN_ENV), insecure)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse to run open by accident, with shared tokens, or with a contradiction."""
        tokens = [t for t in (self.detector_token, self.operator_token) if t is not None]
        if self.insecure and tokens:
            raise AuthConfigError(f"--insecure-no-auth conflicts with {DETECTOR_TOKEN_ENV}/"
                                  f"{OPERATOR_TOKEN_ENV} being set; use one or the other")
        if not self.insecure and not tokens:
            raise AuthConfigError(f"set {DETECTOR_TOKEN_ENV} and/or {OPERATOR_TOKEN_ENV} "
                                  "(bearer tokens), or pass --insecure-no-auth to run without auth")
        if len(tokens) == 2 and hmac.compare_digest(tokens[0].encode(), tokens[1].encode()):
            raise AuthConfigError(f"{DETECTOR_TOKEN_ENV} and {OPERATOR_TOKEN_ENV} must differ, "
                                  "so a detector can never act as an operator")
        if any(len(t) < 16 for t in tokens):
            raise AuthConfigError("bearer tokens must be at least 16 characters long")

    def _token(self, role: Role) -> str | None:
        return self.detector_token if role == Role.DETECTOR else self.operator_token

    def authorize(self, presented: str | None, required: Role, *also: Role) -> None:
        """Raise 401 or 403 unless `presented` is the token of the required role (or of one of
        the roles in `also`, for endpoints both roles may call)."""
        if self.insecure:
            return
        if not presented:
            raise _unauthorized("missing bearer token (Authorization: Bearer TOKEN)")
        given = presented.encode()
        holder: Role | None = None
        for role in Role:
            token = self._token(role)
            # Every configured token is compared, so timing does not reveal which one matched.
            if token is not None and hmac.compare_digest(given, token.encode()):
                holder = role
        if holder is None:
            raise _unauthorized("invalid bearer token")
        if holder != required and holder not in also:
            if self._token(required) is None:
                raise HTTPException(status.HTTP_403_FORBIDDEN, f"the {required.value} API is disabled: "
                                    f"{_TOKEN_ENV[required]} is not set on the gateway")
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"the {holder.value} token cannot call "
                                f"{required.value} endpoints")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message,
                         headers={"WWW-Authenticate": "Bearer"})
