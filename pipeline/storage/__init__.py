"""Storage plumbing: object-store access through fsspec (``Location``), the one retry policy,
secret redaction, and request accounting."""
