"""A run's lifecycle: fail-fast checks, the lease on OUT, the frozen plan, one attempt through
an engine, and the commit that makes the run visible."""
