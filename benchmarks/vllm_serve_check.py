#!/usr/bin/env python3
"""``vllm serve`` with ``{"backend": "tri_inductor"}``: one /v1/completions request, bounded time.

Starts the OpenAI server on 127.0.0.1 for a small Llama-shaped model (config.json + dummy
weights, no tokenizer), with vLLM's engine in its own subprocess (VLLM_ENABLE_V1_MULTIPROCESSING=1,
so the plugin must load there too), sends token-id prompts, prints the answer and the server's
tri_inductor log lines, and stops the server.  Exit 0 iff every prompt got max_tokens tokens.

On the GPU machine, from the repo root:

    source .gpu-env/setup.sh && python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . \
      && python3 benchmarks/vllm_serve_check.py
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=1024, intermediate_size=2816,
              num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_hidden_layers=2, vocab_size=32000,
              rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", max_position_embeddings=4096,
              torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


def post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def stop(proc: subprocess.Popen) -> None:
    """SIGINT the server's process group (ours: started with start_new_session), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--multiprocessing", choices=("0", "1"), default="1",
                   help="VLLM_ENABLE_V1_MULTIPROCESSING for the server (1: engine in a subprocess)")
    p.add_argument("--strict", action="store_true", help="TRI_INDUCTOR_STRICT=1 for the server")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tri_serve_"))
    model = tmp / "llama-tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    port = free_port()
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING=args.multiprocessing)
    env.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    env.pop("VLLM_USE_FLASHINFER_SAMPLER", None)  # the plugin must turn it off by itself
    if args.strict:
        env["TRI_INDUCTOR_STRICT"] = "1"
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--load-format", "dummy", "--skip-tokenizer-init",
           "--dtype", "bfloat16", "--max-model-len", "512", "--max-num-seqs", "16",
           "--gpu-memory-utilization", "0.5", "--compilation-config", json.dumps({"backend": "tri_inductor"})]
    log_path = tmp / "server.log"
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ok = False
    try:
        base = f"http://127.0.0.1:{port}"
        while time.time() - t0 < args.startup_timeout:
            if proc.poll() is not None:
                print(f"server exited with {proc.returncode} during startup", flush=True)
                break
            if get(base + "/health") == 200:
                break
            time.sleep(2)
        else:
            print(f"server not healthy after {args.startup_timeout:.0f} s", flush=True)
        if proc.poll() is None and get(base + "/health") == 200:
            startup = time.time() - t0
            prompts = [[1, 450, 4996, 17354, 1701, 432, 17204, 975, 278], [1, 3439, 17632, 1925, 29892]]
            body = {"model": str(model), "prompt": prompts, "max_tokens": args.max_tokens, "temperature": 0.0,
                    "return_token_ids": True, "ignore_eos": True}
            t1 = time.time()
            answer = post(base + "/v1/completions", body, args.request_timeout)
            print(f"startup {startup:.1f} s, request {time.time() - t1:.2f} s")
            print(json.dumps(answer, indent=1)[:4000])
            choices = answer.get("choices", [])
            ok = len(choices) == len(prompts) and all(len(c.get("token_ids") or []) == args.max_tokens
                                                      for c in choices)
    except Exception as e:  # noqa: BLE001
        print(f"request failed: {e!r}", flush=True)
    finally:
        stop(proc)
    log_text = log_path.read_text(errors="replace")
    ours = [l for l in log_text.splitlines() if "tri_inductor" in l or "TriInductor" in l]
    print("\n--- server log lines about tri_inductor (plugin config changes, compiler, audit) ---")
    print("\n".join(ours[-60:]) or "(none: the plugin did not log -- is the package pip-installed?)")
    engine_compiled = any("TriInductorCompiler" in l for l in ours)
    if not ok:
        print("\n--- server log tail ---\n" + log_text[-6000:])
    print(f"\nserve check: {'PASS' if ok and engine_compiled else 'FAIL'} "
          f"(answer ok: {ok}, our compiler used in the engine process: {engine_compiled}); "
          f"total {time.time() - t0:.1f} s")
    return 0 if ok and engine_compiled else 1


if __name__ == "__main__":
    sys.exit(main())
