"""``python -m vip2scan.jobs.bench [OPTIONS]``: the bench alone, where Ray or moto are missing."""

from .command import main

if __name__ == "__main__":
    main()
