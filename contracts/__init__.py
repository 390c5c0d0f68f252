"""Usage contracts: the terms under which a provider's data may be used, and their lifecycle."""

from contracts.model import (
    Contract,
    ContractStatus,
    Dominance,
    FieldForm,
    IllegalTransition,
    Terms,
)

__all__ = ["Contract", "ContractStatus", "Dominance", "FieldForm", "IllegalTransition", "Terms"]
