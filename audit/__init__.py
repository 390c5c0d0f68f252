"""The audit ledger: canonical entries, hash chain, Merkle root and verification.

Pure code: no web framework, no database layer. Storage adapters live in ``broker.store``.
"""
