#!/usr/bin/env bash
# The prepared GPU run of issue 24, for the device machine: `bash experiments/gpu_run.sh`.
#
# The device machine is a fresh copy of the work tree with its own python3 (torch, triton, timm, einops,
# typer, rich, pytest, hypothesis, matplotlib, scikit-learn, safetensors are in its image; see
# /work/.library/device/KINDS.md) and no network: nothing is installed, srr runs from the tree
# (PYTHONPATH). What is missing is listed first; the run itself records what it could not measure
# (e.g. timm absent: its rows say so).
#
# Writes gpu_<device>.json and gpu_<device>.log (and this script's own gpu_run.log) into $OUT where the
# device tool sets it, else experiments/results/bench. The JSON is rewritten after every section, so a
# run stopped at the tool's timeout still brings back the sections it finished.
#
#   BUDGET=480 (default): seconds for all sections; run with the device tool's timeout_s=560, one try.
#   BUDGET=300: leaves room for a second try inside the 15 minutes of device time (start-up ~1-2 min).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-experiments/results/bench}"
BUDGET="${BUDGET:-480}"
PY="$(command -v python3 || command -v python)"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  echo "gpu_run.sh: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${BUDGET}s"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: not found"
  "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "triton", "timm", "einops", "typer", "rich", "pytest", "hypothesis", "sklearn",
             "matplotlib", "safetensors", "torchvision"):
    try:
        print(f"  {name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as error:
        print(f"  {name} MISSING ({type(error).__name__}: {error})")
import torch
print("  cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
  "$PY" -m srr.bench.gpu --device cuda --budget-s "$BUDGET" --out-dir "$OUT_DIR"
  echo "gpu_run.sh: exit $? at $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT_DIR/gpu_run.log"
