#!/usr/bin/env bash
# `vip2scan bench` on a GPU: ViT-L-14-336-quickgelu at 518 px, random weights, batch sizes
# 16/32/64, bf16 autocast, pinned memory + non-blocking copies, one process on one GPU; the
# large-photo decode section (5 MP JPEGs, with the first batch size's run); and the data
# plane's ceiling (`--model null`: the null detector on 64 px PNGs, maps on).
#
# Runs on the project's GPU machine (torch, torchvision, timm, pyarrow, fsspec, safetensors,
# pillow present; no open_clip, zarr, duckdb, Ray or package registry). What is missing
# travels as wheels in .whl/ (fetch them here first, see "Preparing the wheels" below), and
# the scan runs with --engine local (the same read -> decode -> infer -> write path on
# threads), because Ray's wheel (~80 MB) does not fit the 64 MiB that may travel.
#
# From the repository root on the GPU machine:
#     bash infra/gpu_bench.sh            # JSON per batch size + a combined JSON on stdout
# Through this workplace's device tool: run(command="bash infra/gpu_bench.sh", carry=[".whl"],
# timeout_s=600); the JSON files land in $OUT (at most 7 files). Budget: about 1 min of lake
# generation, then about 1-2 min per batch size, under 1 min for the ceiling; each bench run
# is capped at 400 s. With a short device budget, GPU_BENCH_BATCHES=32 keeps it to ~4 min.
# Environment knobs (all optional):
#     GPU_BENCH_IMAGES=4000   lake size (518 px PNGs, generated once in parallel)
#     GPU_BENCH_BATCHES="16 32 64"
#     GPU_BENCH_PHOTOS=16         5 MP JPEGs for the large-photo decode section (0: skip)
#     GPU_BENCH_NULL_IMAGES=4000  lake of the null-model ceiling (0: skip it)
#     GPU_BENCH_CHANNELS_LAST=1   also measure channels_last at the best batch size
#     GPU_BENCH_COMPILE=1         also measure torch.compile at the best batch size (slow start)
#     GPU_BENCH_OUT=$OUT          where the JSON files go (default: $OUT, else /tmp/gpu-bench)
#     GPU_BENCH_DEVICE / GPU_BENCH_BACKBONE / GPU_BENCH_IMAGE_SIZE, PYTHON: for a CPU smoke test
#     of this script (e.g. GPU_BENCH_DEVICE=cpu GPU_BENCH_BACKBONE=vip2-tiny GPU_BENCH_IMAGE_SIZE=224
#     GPU_BENCH_IMAGES=32 GPU_BENCH_BATCHES=16 GPU_BENCH_PHOTOS=2 GPU_BENCH_NULL_IMAGES=64
#     GPU_BENCH_SKIP_WHEELS=1 PYTHON=.venv/bin/python bash infra/gpu_bench.sh)
#
# Preparing the wheels (on a machine with pip and a registry, Python 3.12 targets):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 zarr==3.1.6 numcodecs==0.16.6 \
#       donfig==0.8.1.post1 google-crc32c==1.9.0 duckdb==2.0.1
# (.whl/ is git-ignored; name it in the device tool's `carry`.)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${GPU_BENCH_OUT:-${OUT:-/tmp/gpu-bench}}"
IMAGES="${GPU_BENCH_IMAGES:-4000}"
BATCHES="${GPU_BENCH_BATCHES:-16 32 64}"
PHOTOS="${GPU_BENCH_PHOTOS:-16}"
NULL_IMAGES="${GPU_BENCH_NULL_IMAGES:-4000}"
DEVICE="${GPU_BENCH_DEVICE:-cuda}"
BACKBONE="${GPU_BENCH_BACKBONE:-ViT-L-14-336-quickgelu}"
IMAGE_SIZE="${GPU_BENCH_IMAGE_SIZE:-518}"
SITE=/tmp/site
WORKDIR="${GPU_BENCH_WORKDIR:-/tmp/vip2scan-bench}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR" "$WORKDIR"

# 1. Travelling wheels -> /tmp/site (no index, no dependency resolution: every wheel named).
if [ "${GPU_BENCH_SKIP_WHEELS:-0}" != 1 ] && compgen -G "$REPO/.whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$REPO"/.whl/*.whl || { echo "wheel install failed" >&2; exit 1; }
fi

# 2. The project itself, without building or installing: vip2scan/{model,pipeline,jobs} as
#    links to the source folders (the layout setuptools' package-dir gives an install).
PKG=/tmp/vip2scan-src/vip2scan
rm -rf /tmp/vip2scan-src && mkdir -p "$PKG"
cp "$REPO/vip2scan_pkg/__init__.py" "$PKG/__init__.py"
for part in model pipeline jobs; do ln -s "$REPO/$part" "$PKG/$part"; done
export PYTHONPATH="/tmp/vip2scan-src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 VIP2SCAN_BENCH_DIR="$WORKDIR"

{ "$PY" - <<'EOF' || { echo "environment check failed" >&2; exit 1; }
import torch, open_clip, zarr, duckdb, vip2scan.pipeline.engines.local  # noqa: F401
print(f"torch {torch.__version__} cuda={torch.cuda.is_available()} "
      f"gpu={torch.cuda.get_device_name(0) if torch.cuda.is_available() else None} "
      f"open_clip {open_clip.__version__} zarr {zarr.__version__}", flush=True)
EOF
} >&2  # stdout carries the combined JSON only
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader 2>/dev/null || true; } >&2

bench() {  # bench JSON_NAME [flags...]
  local name="$1"; shift
  echo "== bench $name $*" >&2
  timeout 400 "$PY" -m vip2scan.jobs.bench --device "$DEVICE" --engine local --source local \
    --workdir "$WORKDIR" --json "$OUT_DIR/$name.json" "$@" >&2
  local rc=$?
  [ $rc -eq 0 ] || echo "bench $name failed with exit code $rc" >&2
  return $rc
}

# 3. One bench run per batch size (the lake and checkpoint are made by the first, reused
#    after); the first also times the large-photo decode (it needs the same checkpoint).
MODEL=(--backbone "$BACKBONE" --image-size "$IMAGE_SIZE" --images "$IMAGES")
PHOTO_FLAGS=()
[ "$PHOTOS" -gt 0 ] && PHOTO_FLAGS=(--large-photos "$PHOTOS")
for b in $BATCHES; do
  bench "bench-b$b" "${MODEL[@]}" --batch-size "$b" "${PHOTO_FLAGS[@]}"
  PHOTO_FLAGS=()
done

# 4. Optional layout/compile variants at the batch size that did best end to end.
BEST=$("$PY" - "$OUT_DIR" <<'EOF'
import json, pathlib, sys
runs = []
for p in pathlib.Path(sys.argv[1]).glob("bench-b*.json"):
    d = json.loads(p.read_text())
    ips = (d.get("pipeline", {}).get("local") or {}).get("images_per_s") or 0
    runs.append((ips, d["environment"]["batch_size"]))
print(max(runs)[1] if runs else 32)
EOF
)
[ "${GPU_BENCH_CHANNELS_LAST:-0}" = 1 ] && bench "bench-b$BEST-cl" "${MODEL[@]}" --batch-size "$BEST" --channels-last
[ "${GPU_BENCH_COMPILE:-0}" = 1 ] && bench "bench-b$BEST-compile" "${MODEL[@]}" --batch-size "$BEST" --compile

# 5. The data plane's ceiling: the same scan with the null detector (64 px PNGs, maps on).
#    The local engine (no Ray travels), so its CPU by role is one process: the driver.
[ "$NULL_IMAGES" -gt 0 ] && bench "bench-null" --model null --images "$NULL_IMAGES" --batch-size "$BEST"

# 6. One combined JSON object on stdout: {"runs": {name: bench JSON}, "best_batch_size": B,
#    "ceiling": the null run's ceiling section, "large_photos": the photo section}.
"$PY" - "$OUT_DIR" "$BEST" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("bench-*.json"))}
combined = {"runs": runs, "best_batch_size": int(sys.argv[2]),
            "ceiling": (runs.get("bench-null") or {}).get("ceiling"),
            "large_photos": next((r["large_photos"] for r in runs.values() if r.get("large_photos")), None)}
(out / "gpu_bench.json").write_text(json.dumps(combined, indent=2))
print(json.dumps(combined, indent=2))
EOF
