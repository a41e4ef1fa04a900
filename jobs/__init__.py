"""The vip2scan command line: a thin typer layer over model/ and pipeline/."""
