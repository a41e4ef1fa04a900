"""A bad setting gets the same one-line message whichever way it comes in: the Python API
(InvalidSetting), a scan flag or a config file key (a usage error naming the flag, exit 2), or
the bench's flags, because all of them build the same spec (pipeline/specs.py)."""

from __future__ import annotations

import math

import pytest

from vip2scan.errors import InvalidSetting
from vip2scan.pipeline import ScanOptions

# (ScanOptions keyword, value, the scan flag and its text, what the message says)
INVALID = [
    ("engine", "spark", ["--engine", "spark"], "expected one of auto, ray, local, got 'spark'"),
    ("maps", "some", ["--maps", "some"], "expected one of all, anomalous, none, got 'some'"),
    ("map_dtype", "float32", ["--map-dtype", "float32"],
     "expected one of float16, uint8, got 'float32'"),
    ("map_size", 100000, ["--map-size", "100000"], "expected 1 to 4096, got 100000"),
    ("map_size", 0, ["--map-size", "0"], "expected 1 to 4096, got 0"),
    ("maps_per_shard", 0, ["--maps-per-shard", "0"], "expected 1 to 256, got 0"),
    ("batch_size", 0, ["--batch-size", "0"], "expected 1 to 4096, got 0"),
    ("limit", 0, ["--limit", "0"], "expected at least 1, got 0"),
    ("actors", (3, 1), ["--actors", "3..1"], "need 1 <= MIN <= MAX, got 3..1"),
    ("image_threshold", math.nan, ["--image-threshold", "nan"], "expected a finite number, got nan"),
    ("image_threshold", -math.inf, ["--threshold", "-inf"], "expected a finite number, got -inf"),
    ("pixel_threshold", 1.5, ["--pixel-threshold", "1.5"], "expected a number from 0 to 1, got 1.5"),
    ("max_image_pixels", 0, ["--max-image-pixels", "0"], "expected at least 1, got 0"),
    ("max_object_bytes", 0, ["--max-object-bytes", "0"], "expected at least 1, got 0"),
    ("image_size", 0, ["--image-size", "0"], "expected 1 to 4096, got 0"),
    ("suffixes", (".heic",), ["--suffixes", ".heic"], "cannot scan '.heic' files"),
]


@pytest.mark.parametrize("name, value, flag, says", INVALID, ids=[" ".join(c[2]) for c in INVALID])
def test_the_api_and_the_cli_refuse_a_bad_value_with_the_same_words(cli, name, value, flag, says):
    with pytest.raises(InvalidSetting) as refused:
        ScanOptions(**{name: value})
    assert says in refused.value.problem and "\n" not in str(refused.value)
    assert refused.value.setting == name and str(refused.value).startswith(f"{name}: ")

    ran = cli("scan", "lake/", "--out", "o/", "--checkpoint", "c", *flag)
    assert ran.exit_code == 2, ran.stderr
    (line,) = ran.stderr.strip().splitlines()
    shown = "--" + name.replace("_", "-")
    assert line.startswith(f"usage error: Invalid value for '{shown}': ") and refused.value.problem in line


def test_a_config_file_value_is_checked_by_the_same_spec(cli, tmp_path):
    config = tmp_path / "scan.toml"
    config.write_text('[scan]\nmap-dtype = "float32"\nbatch-size = 8\n')
    ran = cli("scan", "lake/", "--out", "o/", "--checkpoint", "c", "--config", str(config))
    assert ran.exit_code == 2
    assert "'--map-dtype': expected one of float16, uint8, got 'float32'" in ran.stderr


def test_the_bench_builds_its_engine_through_the_same_spec(cli):
    ran = cli("bench", "--batch-size", "0", "--engine", "local")
    assert ran.exit_code == 2
    assert "Invalid value for '--batch-size': expected 1 to 4096, got 0" in ran.stderr
