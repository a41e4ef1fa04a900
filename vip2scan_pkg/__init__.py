"""vip2scan: zero-shot defect scanning of image lakes with ViP2-CLIP.

The code lives in three top-level folders installed as sub-packages:
``vip2scan.model`` (torch only), ``vip2scan.pipeline`` (Ray Data, storage) and
``vip2scan.jobs`` (the typer CLI).
"""

__version__ = "0.1.0"
