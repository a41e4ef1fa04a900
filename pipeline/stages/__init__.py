"""The stages of a scan, as callables that map a numpy batch dict to a batch dict.

- ``stages.decode``: read + decode (CPU tasks): work-list rows -> uint8 pixels or error rows;
- ``stages.infer``: inference (actors holding the detector) + the map write.

Both engines (pipeline/engines/) run these same callables; schema.py has the columns they
hand each other.
"""
