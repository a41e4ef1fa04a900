"""The scan pipeline: object storage -> Ray Data -> Parquet scores + Zarr maps."""
