"""What a scan scores: listing or a manifest, filtered by keys and suffixes, diffed against the
``latest`` snapshot of the same source and model."""
