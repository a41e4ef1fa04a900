"""The OUT format: every path under OUT, the Parquet schemas, run records, the ``latest``
snapshot, the Zarr map store, calibration, and reading and verifying what was committed."""
