"""Our Triton GEMM, for any (M, N, K, dtype) on any device.

| module          | job                                                                   |
|-----------------|-----------------------------------------------------------------------|
| ``configs``     | ``Cfg``, ``Kind``, M buckets, the device (SM count, shared memory),   |
|                 | validation, the shipped per-shape table (``tuned_sm90.json``)         |
| ``heuristics``  | the cost model: a config for any shape, the tuner's candidate space   |
| ``kernels``     | the Triton kernels (pointer, TMA, GEMV, split-K reduction)            |
| ``launch``      | launching one config (grid, split-K workspace, TMA, fused epilogue)   |
| ``tuning``      | measured choice at compile time (on by default on a GPU), cached      |
| ``ops``         | ``tri_inductor::mm / addmm / mm_act_mul``, dispatch over M buckets    |
| ``triangular``  | ``tri_inductor::solve_triangular`` (small systems, by substitution)   |

Config choice for one (N, K, M bucket): a stored tuning result, else (on a real GPU) the cost
model's best candidates measured once and the fastest stored, else the shipped table's entry or
the cost model's pick. The FX patterns that route graphs here are ``patterns/linear.py`` and
``patterns/gate_up.py``. Design notes: docs/design/gemm.md.
"""
