#!/usr/bin/env bash
# Build a second, isolated test stack in a virtual environment (CI runs the CPU suite on it too):
#   scripts/install_stack.sh NAME VENV_DIR
# NAME: "2.14" = torch 2.14.0 / triton 3.8 / vLLM 0.34.0 (what vLLM 0.33/0.34 pin).
# This is CI set-up, not a user install: users run `pip install tri-inductor` into their own env.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="${1:?usage: install_stack.sh NAME VENV_DIR}"
VENV="${2:?usage: install_stack.sh NAME VENV_DIR}"
case "$NAME" in
    # vLLM 0.34 pins xgrammar and apache-tvm-ffi exactly (its wheel metadata).
    2.14) TORCH="torch==2.14.0"; VLLM="vllm==0.34.0"; TRANSFORMERS="transformers>=5.16.1,<5.21"
          PINS="xgrammar==0.2.8 apache-tvm-ffi==0.1.11" ;;
    *) echo "unknown stack '$NAME' (known: 2.14)" >&2; exit 2 ;;
esac
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
# --isolated: a find-links folder of +cpu wheels (no triton) or a constraints file capping torch on a
# build machine must not pick the stack for us; the index's torch 2.14 (cu130) wheel runs on CPU.
PIP="$PY -m pip install -q --isolated --no-cache-dir --disable-pip-version-check"  # no wheel cache: ~4 GB a run
$PIP --upgrade pip
# torch pulls its pinned triton (3.8.x for 2.14).
$PIP "$TORCH" "numpy<2.4" "pytest>=8" "pytest-timeout" sympy matplotlib "setuptools>=61" wheel
# vLLM without its GPU-only dependencies, then the light packages it imports (as scripts/install.sh).
$PIP --no-deps "$VLLM"
$PIP "$TRANSFORMERS" tokenizers huggingface_hub safetensors sentencepiece tiktoken psutil requests tqdm \
    pyyaml einops cloudpickle aiohttp pillow protobuf prometheus-client regex py-cpuinfo jinja2 "pydantic>=2.12" \
    msgspec pyzmq cbor2 pybase64 cachetools "fastapi<0.137" starlette openai openai-harmony partial-json-parser \
    "llguidance<1.8,>=1.7" opentelemetry-api httpx2 sniffio uvloop $PINS
$PIP --no-deps --no-build-isolation -e .
"$PY" -c "import torch, triton, vllm, tri_inductor; print(f'stack $NAME ready: torch {torch.__version__}, triton {triton.__version__}, vllm {vllm.__version__}')"
