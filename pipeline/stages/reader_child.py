"""The reader process's program: sandbox.py's child loop, which also reads and decodes whole
groups (stages/reader.py). Run as a script (``python -P reader_child.py``) by READERS."""

from vip2scan.pipeline.stages.reader import serve_group
from vip2scan.pipeline.stages.sandbox import OP_READ_GROUP, main

if __name__ == "__main__":
    main({OP_READ_GROUP: serve_group})
