"""Training and evaluation of the ViP2-CLIP head, without Ray.

``step``: one optimiser step; ``loop``: the epoch loop shared by Ray Train workers and local
runs; ``evaluation``: scoring labelled data and the metrics table; ``checkpoints``: where a run keeps
its checkpoints (torch-free, so a scan's CLI can follow ``latest`` cheaply). Import the
submodules directly: this package imports nothing, so ``checkpoints`` stays light.
"""
