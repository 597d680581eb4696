"""CPU harnesses for tests and debugging; never imported by kernels or patterns.

* :mod:`.codegen_only`: a fake sm_90 device, so Inductor writes real CUDA Triton code and
  triton's ptxas builds sm_90 cubins without a GPU (nothing is launched): the audits.
* :mod:`.interpret`: Inductor's Triton for CPU tensors, and our kernels, run in Triton's
  interpreter: numerics. Importing it registers its CPU launcher with ``patterns/_launch.py``.
"""
