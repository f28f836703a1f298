#!/usr/bin/env bash
# Regenerate gpuguard/v1/*_pb2*.py from proto/. tests/test_proto_fresh.py fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${1:-.}
"$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" proto/gpuguard/v1/*.proto
"$PY" scripts/gen_vocab.py
