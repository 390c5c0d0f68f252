"""Usage contracts: the terms under which a provider's data may be used, and their lifecycle."""
