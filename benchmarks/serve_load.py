#!/usr/bin/env python3
"""``vllm serve`` under concurrent load and bad requests: ours vs vLLM's compile path (issue 22).

NOT YET RUN: written on a CPU-only machine and never executed on a GPU; expect to fix details on
its first run.  See docs/design/trust.md and shared notes/serving.md (a token id of 10^9 killed
the engine at 1ed87f1: this script sends one on purpose).

For each backend (``tri_inductor``, then vLLM's default Inductor compile path) it starts the
OpenAI server for a Llama-shaped model with dummy weights and no tokenizer, then sends
``--requests`` good ``/v1/completions`` requests from ``--clients`` concurrent threads (token-id
prompts of 4..900 tokens, max_tokens 1/8/64/200, greedy, ignore_eos; every prompt is sent twice),
with one bad request in ``--bad-every`` interleaved: an over-long prompt, a negative max_tokens, a
token id out of range (vocab + 7 and 10**9), an empty prompt, broken JSON.

Pass (exit 0) iff, for each backend: every good request got exactly its max_tokens tokens; the two
answers to each prompt are identical; every bad request got a 4xx (no 5xx, no time-out); the server
is healthy afterwards and still answers; and ours is within 5% of the baseline on p50 and p99
latency and on throughput (output tokens/s).  Writes benchmarks/results/serve_load_<card>.json.

    source .gpu-env/setup.sh && python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . \\
      && python3 benchmarks/serve_load.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import card_slug, git_info, versions  # noqa: E402
from _vllm_common import nvidia_smi_card, percentile  # noqa: E402
from vllm_serve_check import CONFIG, free_port, get, stop  # noqa: E402

MAX_MODEL_LEN = 2048
TOLERANCE = 0.05


def send(url: str, body: bytes, timeout: float) -> tuple[int, dict | None, float]:
    """(HTTP status, JSON answer or None, seconds); status 0 on a time-out or a dropped connection."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, None, time.perf_counter() - t0
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return 0, None, time.perf_counter() - t0


def workload(n_good: int, bad_every: int, vocab: int, seed: int, model: str) -> list[dict]:
    rng = random.Random(seed)
    prompts = []
    for i in range(n_good // 2):
        length = rng.choice([4, 16, 64, 256, 900])
        prompts.append(([rng.randrange(3, vocab) for _ in range(length)], rng.choice([1, 8, 64, 200])))
    good = [{"kind": "good", "id": i, "prompt": p, "max_tokens": m} for i, (p, m) in enumerate(prompts)] * 2
    rng.shuffle(good)
    bad_forms = [
        ("over_long", {"prompt": [5] * (MAX_MODEL_LEN + 10), "max_tokens": 8}),
        ("negative_max_tokens", {"prompt": [5, 6, 7], "max_tokens": -1}),
        ("token_out_of_range", {"prompt": [5, vocab + 7, 6], "max_tokens": 8}),
        ("token_1e9", {"prompt": [5, 10**9, 6], "max_tokens": 8}),
        ("empty_prompt", {"prompt": [], "max_tokens": 8}),
        ("broken_json", None),
    ]
    out = []
    for i, g in enumerate(good):
        out.append(g)
        if bad_every and i % bad_every == bad_every - 1:
            name, body = bad_forms[(i // bad_every) % len(bad_forms)]
            out.append({"kind": "bad", "name": name, "body": body})
    for r in out:
        if r["kind"] == "good":
            r["raw"] = json.dumps({"model": model, "prompt": r["prompt"], "max_tokens": r["max_tokens"],
                                   "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}).encode()
        else:
            r["raw"] = (b'{"model": "x", "prompt": [1, 2' if r["body"] is None
                        else json.dumps({"model": model, "temperature": 0.0, **r["body"]}).encode())
    return out


def run_backend(backend: str | None, args, model: Path, tmp: Path) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    comp = {"backend": backend} if backend else {}
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--load-format", "dummy", "--skip-tokenizer-init", "--dtype", "bfloat16",
           "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "64", "--gpu-memory-utilization", "0.5",
           "--compilation-config", json.dumps(comp)]
    log_path = tmp / f"server_{backend or 'inductor'}.log"
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    res: dict = {"backend": backend or "vllm_inductor", "cmd": cmd}
    try:
        while time.time() - t0 < args.startup_timeout and proc.poll() is None and get(base + "/health") != 200:
            time.sleep(2)
        if get(base + "/health") != 200:
            res["error"] = "server not healthy after start-up"
            return res
        res["startup_s"] = round(time.time() - t0, 1)
        reqs = workload(args.requests, args.bad_every, CONFIG["vocab_size"], args.seed, str(model))
        url = base + "/v1/completions"
        send(url, reqs[0]["raw"], args.request_timeout)  # warm-up
        t1 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            answers = list(pool.map(lambda r: send(url, r["raw"], args.request_timeout), reqs))
        wall = time.perf_counter() - t1
        good = [(r, a) for r, a in zip(reqs, answers) if r["kind"] == "good"]
        bad = [(r, a) for r, a in zip(reqs, answers) if r["kind"] == "bad"]
        wrong_len, outputs = [], {}
        for r, (status, body, _) in good:
            ids = ((body or {}).get("choices") or [{}])[0].get("token_ids") or []
            if status != 200 or len(ids) != r["max_tokens"]:
                wrong_len.append({"id": r["id"], "status": status, "got": len(ids), "want": r["max_tokens"]})
            outputs.setdefault(r["id"], []).append(ids)
        differ = [i for i, outs in outputs.items() if len(outs) == 2 and outs[0] != outs[1]]
        bad_not_4xx = [{"name": r["name"], "status": s} for r, (s, _, _) in bad if not 400 <= s < 500]
        lat = [t for (_, (s, _, t)) in good if s == 200]
        healthy = get(base + "/health") == 200 and send(url, reqs[0]["raw"], args.request_timeout)[0] == 200
        res.update(
            requests=len(reqs), good=len(good), bad=len(bad), wall_s=round(wall, 2),
            p50_ms=round(1e3 * percentile(lat, 50), 1) if lat else None,
            p99_ms=round(1e3 * percentile(lat, 99), 1) if lat else None,
            out_tok_per_s=round(sum(r["max_tokens"] for r, (s, _, _) in good if s == 200) / wall, 1),
            wrong_length=wrong_len[:20], n_wrong_length=len(wrong_len), nondeterministic=differ[:20],
            bad_not_4xx=bad_not_4xx, healthy_after=healthy)
        res["ok"] = not wrong_len and not differ and not bad_not_4xx and healthy
    finally:
        stop(proc)
        res["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--requests", type=int, default=600, help="good requests (each prompt twice)")
    p.add_argument("--bad-every", type=int, default=20)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--quick", action="store_true", help="64 clients, 120 requests")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.quick:
        args.clients, args.requests = 64, 120
    tmp = Path(tempfile.mkdtemp(prefix="tri_serve_load_"))
    model = tmp / "llama"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(dict(CONFIG, hidden_size=2048, intermediate_size=5632,
                                                       num_hidden_layers=args.layers,
                                                       max_position_embeddings=MAX_MODEL_LEN * 2)))
    ours = run_backend("tri_inductor", args, model, tmp)
    base = run_backend(None, args, model, tmp)
    ratios = {}
    for k, better_low in (("p50_ms", True), ("p99_ms", True), ("out_tok_per_s", False)):
        if ours.get(k) and base.get(k):
            ratios[k] = round(ours[k] / base[k], 3)
    within = bool(ratios) and all((r <= 1 + TOLERANCE) if k != "out_tok_per_s" else (r >= 1 - TOLERANCE)
                                  for k, r in ratios.items())
    passed = bool(ours.get("ok")) and bool(base.get("ok")) and within and len(ratios) == 3
    card = nvidia_smi_card()
    result = {"benchmark": "serve_load", "card": card, "git": git_info(), "versions": versions(),
              "args": vars(args), "ours": ours, "baseline": base, "ratios_ours_over_baseline": ratios,
              "tolerance": TOLERANCE, "pass": passed}
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"serve_load_{card_slug(card)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for r in (ours, base):
        print({k: r.get(k) for k in ("backend", "ok", "startup_s", "p50_ms", "p99_ms", "out_tok_per_s",
                                     "n_wrong_length", "bad_not_4xx", "healthy_after", "error")})
    print(f"ratios ours/baseline: {ratios}; serve_load: {'PASS' if passed else 'FAIL'}; wrote {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
