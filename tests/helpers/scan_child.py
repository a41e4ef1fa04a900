"""Run one scan in a child process (used by the interruption test): argv = lake out ckpt json."""

import json
import sys

from vip2scan.pipeline import ScanOptions, scan

if __name__ == "__main__":
    lake, out, checkpoint, options = sys.argv[1:5]
    summary = scan(lake, out, checkpoint, ScanOptions(**json.loads(options)))
    print(json.dumps(summary.to_dict(), default=str))
