"""The PolicyEngine the settings choose, behind the decision cache."""

from __future__ import annotations

from broker.domain.ports import PolicyEngine
from broker.policy.cache import CachedPolicyEngine
from broker.policy.embedded import EmbeddedPolicyEngine
from broker.policy.opa import OpaServerPolicyEngine
from broker.settings import Settings


def make_policy_engine(settings: Settings) -> PolicyEngine:
    """``embedded`` (regopy in process) or ``opa`` (an OPA server), cached unless size 0."""
    engine: PolicyEngine
    if settings.policy_engine == "opa":
        if settings.opa_url is None:  # the settings validator already refuses this
            raise ValueError("BROKER_POLICY_ENGINE=opa needs BROKER_OPA_URL")
        token = settings.opa_token.get_secret_value() if settings.opa_token else None
        engine = OpaServerPolicyEngine(
            settings.opa_url, settings.policy_dir, timeout=settings.policy_timeout_seconds,
            token=token, push=settings.opa_push_policies,
        )
    else:
        engine = EmbeddedPolicyEngine(settings.policy_dir, timeout=settings.policy_timeout_seconds)
    if settings.policy_cache_size:
        return CachedPolicyEngine(engine, settings.policy_cache_size)
    return engine


def close_policy_engine(engine: PolicyEngine) -> None:
    """Release whatever the engine holds (threads, HTTP sessions, native handles)."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()
