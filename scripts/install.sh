#!/usr/bin/env bash
# Set up a fresh machine (CPU or GPU) for tri_inductor: the pinned torch/triton, vLLM 0.26 and
# the test tools, then this package in editable mode. Safe to run again (pip skips what is there).
# This is the CI/contributor set-up, not the user install (README: pip install).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "tri_inductor set-up: ~6 GB of wheels (torch with its CUDA libraries), 5-15 minutes on a fresh machine"
# --no-warn-conflicts: vLLM is installed without its GPU-only dependencies on purpose; pip's
# post-install check would list each of them as a red "ERROR ... which is not installed" line
# (exit status 0 all the same). A failed install still fails this script.
PIP="python3 -m pip install -q --disable-pip-version-check --no-warn-conflicts"
# torch 2.11 / triton 3.6: the versions on the GPU machine. numpy < 2.4: triton 3.6's interpreter.
$PIP "torch==2.11.0" "triton==3.6.0" "numpy<2.4" "pytest>=8" "pytest-timeout" sympy matplotlib "setuptools>=61" wheel
# vLLM 0.26 (the newest built for torch 2.11) without its GPU-only dependencies (flashinfer, ...),
# then the light packages it imports (tested set; see ../shared/notes/vllm.md).
$PIP --no-deps "vllm==0.26.0"
$PIP "transformers>=4.56,<6" tokenizers huggingface_hub safetensors sentencepiece tiktoken psutil requests tqdm \
    pyyaml einops cloudpickle aiohttp pillow protobuf prometheus-client regex py-cpuinfo jinja2 "pydantic>=2.12" \
    msgspec pyzmq cbor2 pybase64 cachetools "fastapi<0.137" starlette openai openai-harmony partial-json-parser \
    "llguidance<1.8,>=1.7" "xgrammar<1.0" apache-tvm-ffi opentelemetry-api httpx2 sniffio uvloop
$PIP --no-deps --no-build-isolation -e .
python3 -c "import torch, triton, vllm, tri_inductor; print(f'tri_inductor ready: torch {torch.__version__}, triton {triton.__version__}, vllm {vllm.__version__}')"
