"""Pattern coverage on models we have not tuned for: every listed Hugging Face architecture, built
from a tiny config, compiled with ``tri_inductor`` and audited (``audit_model``: on a machine without a GPU in
codegen-only mode, a fake sm_90 card).

Per architecture: whether every kernel is Triton (the audit), which of our pattern families fired,
the non-Triton kernels left (op and source line) and the near misses (an op a family looks for that
it did not rewrite: a spelling to cover). Architectures whose tiny config cannot be built or traced
(a transformers limitation, not ours) are listed with the error.

    python3 benchmarks/hf_survey.py --json benchmarks/results/hf_survey_cpu.json
    python3 benchmarks/hf_survey.py --archs cohere,olmo
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package

# Dense, mixture-of-experts and hybrid decoders and encoders of transformers 5.x not in
# tests/test_hf_models.py (those are the tested set; these are the survey). Each builds from the
# tiny config of tri_inductor/hf_tiny.py.
ARCHS = ("cohere", "cohere2", "stablelm", "phi", "starcoder2", "granite", "olmo", "olmo3", "persimmon",
         "nemotron", "smollm3", "glm", "glm4", "helium", "arcee", "apertus", "ernie4_5", "seed_oss", "opt",
         "bloom", "mpt", "gpt_bigcode", "exaone4", "ministral", "hunyuan_v1_dense",
         "qwen2_moe", "olmoe", "granitemoe", "phimoe", "qwen3_moe", "mixtral", "llama4_text", "glm4_moe",
         "jetmoe",
         # held out until they passed (3abe5e4's run of 33 more: diffllama failed the compile, gemma4_text,
         # nanochat had near misses; the rest built were Triton-only)
         "exaone", "internlm3", "doge", "bitnet", "biogpt", "diffllama", "gemma3_text", "nanochat", "hy_v3",
         "laguna", "cwm", "ministral3", "jais2", "iquestcoder", "hyperclovax", "gemma4_text", "flex_olmo",
         "solar_open", "param2moe",
         "deepseek_v3", "dots1", "ernie4_5_moe", "hunyuan_v1_moe", "minimax", "gpt_oss", "exaone_moe",
         "glm4_moe_lite", "afmoe", "cohere2_moe", "granitemoeshared", "sarvam_moe", "minicpm5_moe",
         "longcat_flash", "lfm2_moe", "minimax_m2",
         # multi-head latent attention beside DeepSeek-V3 (MLA head sizes from hf_tiny)
         "deepseek_v32", "glm_moe_dsa", "minicpm3", "sarvam_mla", "youtu",
         # encoders
         "roberta", "electra", "distilbert", "modernbert", "xlm-roberta", "albert", "ernie",
         # hybrids and state-space models: attention beside (or instead of) Mamba, short-convolution
         # or linear-attention layers
         "qwen3_next", "qwen3_5_moe_text", "kimi_linear", "falcon_h1", "granitemoehybrid", "bamba", "nemotron_h",
         "jamba", "lfm2", "zamba2", "mamba", "mamba2", "falcon_mamba", "bailing_hybrid", "qwen3_5_text",
         "recurrent_gemma", "lfm3")


def survey(arch: str) -> dict:
    import torch

    from tri_inductor import hf_tiny
    from tri_inductor.audit.model import audit_model

    t0 = time.perf_counter()
    try:
        model, (ids, mask) = hf_tiny.build(arch)
    except Exception as e:  # noqa: BLE001  (the config or model cannot be built: not ours)
        return {"built": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    try:
        reports, _ = audit_model(model, [ids, mask], backend="tri_inductor", dtype=torch.bfloat16,
                                 device="cpu")
    except Exception as e:  # noqa: BLE001
        return {"built": True, "error": f"{type(e).__name__}: {str(e)[:300]}", "s": round(time.perf_counter() - t0, 1)}
    return {
        "built": True,
        "triton_only": all(r.ok for r in reports),
        "families": sorted({f for r in reports for f, n in r.pattern_hits.items() if n}),
        "non_triton": [{"op": v.op, "source": (v.source or "")[:200]} for r in reports for v in r.violations],
        "near_misses": [m[:240] for r in reports for m in r.near_misses],
        "s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated transformers model types")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import torch
    import transformers

    results = {}
    for arch in args.archs.split(","):
        results[arch] = r = survey(arch)
        torch._dynamo.reset()
        if "error" in r:
            line = f"not surveyed ({r['error'][:120]})"
        else:
            ops = sorted({v["op"][:60] for v in r["non_triton"]})
            line = (f"{'Triton only' if r['triton_only'] else 'NON-TRITON ' + ', '.join(ops)}"
                    f"; families {','.join(r['families'])}; near misses {len(r['near_misses'])}")
        print(f"{arch:18s} {line}", flush=True)
    done = [r for r in results.values() if "error" not in r]
    summary = {"surveyed": len(done), "triton_only": sum(r["triton_only"] for r in done),
               "without_near_misses": sum(not r["near_misses"] for r in done),
               "not_surveyed": sorted(a for a, r in results.items() if "error" in r)}
    print(json.dumps(summary))
    if args.json:
        import _meta

        out = {"meta": {"mode": "codegen-only (fake sm_90, CPU)", **_meta.versions(),
                        "transformers": transformers.__version__, **_meta.git_info()},
               "summary": summary, "archs": results}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if summary["triton_only"] == summary["surveyed"] else 1


if __name__ == "__main__":
    sys.exit(main())
