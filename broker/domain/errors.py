"""The broker's error tree.

Every failure the broker reports is one of these; ``broker.api.problems`` maps each class to an
HTTP status and renders it as RFC 9457 ``application/problem+json``. Messages never contain row
values: they name fields, columns, row numbers and reasons, nothing a provider uploaded.

::

    BrokerError
    ├── Unauthenticated        401  no, malformed, expired or forged token
    ├── Forbidden              403  role or relation does not permit the action
    │   └── PolicyDenied       403  a policy said no; carries the policy's reasons
    ├── NotFound               404  absent, or not visible to the caller (never says which)
    ├── Conflict               409  the object's state forbids the change
    ├── InvalidInput           422  the request is well-formed JSON but wrong
    │   └── BadDataset         422  an uploaded file does not match its declared schema
    ├── PayloadTooLarge        413  a body or file over the configured limit
    └── Unavailable            503  a dependency (policy engine, audit log) failed: fail closed
        └── DatasetUnreadable  503  stored data failed decryption or its integrity check
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class BrokerError(Exception):
    """Base of every error the broker reports to a client."""

    slug: ClassVar[str] = "broker-error"
    title: ClassVar[str] = "Broker error"
    #: The HTTP status it is answered with, in the API and the console.
    status: ClassVar[int] = 500

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions: dict[str, Any] = extensions


class Unauthenticated(BrokerError):
    """The request carries no valid bearer token."""

    slug = "unauthenticated"
    title = "Authentication required"
    #: The HTTP status it is answered with, in the API and the console.
    status = 401


class Forbidden(BrokerError):
    """The caller is known but may not do this."""

    slug = "forbidden"
    title = "Forbidden"
    #: The HTTP status it is answered with, in the API and the console.
    status = 403


class PolicyDenied(Forbidden):
    """A Rego policy denied the request; ``reasons`` are its stable kebab-case codes."""

    slug = "policy-denied"
    title = "Denied by policy"

    def __init__(self, reasons: Sequence[str], *, detail: str | None = None, **extensions: Any):
        self.reasons = sorted(set(reasons))
        super().__init__(
            detail or "The request was denied by policy: " + ", ".join(self.reasons),
            reasons=self.reasons,
            **extensions,
        )


class NotFound(BrokerError):
    """The object does not exist or is not visible to the caller; the two look alike."""

    slug = "not-found"
    title = "Not found"
    #: The HTTP status it is answered with, in the API and the console.
    status = 404


class Conflict(BrokerError):
    """The object's current state does not allow the change."""

    slug = "conflict"
    title = "Conflict"
    #: The HTTP status it is answered with, in the API and the console.
    status = 409


class InvalidInput(BrokerError):
    """The request is syntactically fine but semantically wrong."""

    slug = "invalid-input"
    title = "Invalid input"
    #: The HTTP status it is answered with, in the API and the console.
    status = 422


class BadDataset(InvalidInput):
    """An uploaded file does not match the declared schema.

    ``problems`` lists ``{column, issue, rows}`` with 1-based data row numbers (at most a few per
    column), never the offending values.
    """

    slug = "bad-dataset"
    title = "Dataset rejected"

    def __init__(self, detail: str, problems: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(detail, problems=[dict(p) for p in problems])


class PayloadTooLarge(BrokerError):
    """The request body or uploaded file is over the configured limit."""

    slug = "payload-too-large"
    title = "Payload too large"
    #: The HTTP status it is answered with, in the API and the console.
    status = 413


class Unavailable(BrokerError):
    """A dependency the decision needs failed; the broker fails closed and releases nothing."""

    slug = "unavailable"
    title = "Service unavailable"
    #: The HTTP status it is answered with, in the API and the console.
    status = 503


class BadSignature(InvalidInput):
    """A contract signature that is missing or does not verify under the signer's key."""

    slug = "bad-signature"
    title = "Signature missing or invalid"


class DatasetUnreadable(Unavailable):
    """Stored data (a dataset version, its key file, the entity index, a cached answer) is
    missing, truncated, tampered with or under an unknown key: it fails authenticated
    decryption, and the broker refuses to compute on it rather than guess."""

    slug = "dataset-unreadable"
    title = "Stored data unreadable"
