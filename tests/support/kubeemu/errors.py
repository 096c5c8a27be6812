"""Errors answered as Kubernetes Status objects (kmock renders ``KubernetesError``)."""

from __future__ import annotations

import kmock

from .kinds import ResourceKind


def error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    # Non-empty details keep kmock from putting a server traceback there.
    details = {"causes": [{"message": message}]}
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


def not_found(kind: ResourceKind, name: str | None) -> kmock.KubernetesError:
    return error(404, "NotFound", f'{kind.plural}.{kind.group} "{name}" not found')
