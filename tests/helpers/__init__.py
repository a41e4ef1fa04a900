"""The test kits: what several test files share, one module per kind of thing.

Imported as ``tests.helpers.<module>`` (``tests`` is a package, see tests/README.md).

    cli_runner       the CLI in-process (typer's CliRunner) or as the installed script
    local_servers    free ports; a real `ray start --head` with its own temp dir and ports
    fault_proxy      a seeded fault-injecting HTTP proxy in front of the moto S3 server
    faulty_storage   s3fs / Zarr store wrappers that fail like S3 (shipped to Ray by value)
    lake_files       broken and awkward files for scans, put_files, a read counter (ditto)
    awkward_images   images decoders get wrong (EXIF, 16-bit, palette, CMYK) and their pixels
    hostile_files    pixel bombs, a sparse 200 MB BMP, junk; a peak-memory sampler
    defect_maps      synthetic masks and anomaly maps for the metric tests and bench_aupro
    s3_scan_lake     what the jobs tests' session scan on moto S3 puts in its lake
    night_lake       a local lake scanned on three nights (the browser tests)
    big_out          a synthetic OUT with many rows (also a script)
    cdp_browser      headless Chromium over the DevTools protocol
    scan_child       script: one scan in a child process (SCAN_CHILD)
    lease_child      script: one scan racing for OUT's lease (LEASE_CHILD)
"""

from pathlib import Path

HELPERS = Path(__file__).resolve().parent
ROOT = HELPERS.parents[1]  # the repository: on PYTHONPATH, `import tests.helpers...` works
SCAN_CHILD = str(HELPERS / "scan_child.py")
LEASE_CHILD = str(HELPERS / "lease_child.py")
