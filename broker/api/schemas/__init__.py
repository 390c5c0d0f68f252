"""Request (``XxxIn``) and response (``XxxOut``) models, one module per feature; requests
forbid unknown fields."""
