"""Pretraining of the embedded backbone (``vip2-synth``) on generated images, and the recipe
that rebuilds the whole embedded checkpoint (backbone + ViP2 head + provenance).

No Ray here, and nothing the scan imports: only ``vip2scan train-embedded`` and the tests
use this package.
"""
