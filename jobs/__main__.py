"""`python -m vip2scan.jobs ...` runs the same CLI as the `vip2scan` script."""

from vip2scan.jobs.cli import main

main()
