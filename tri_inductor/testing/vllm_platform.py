"""A vLLM platform that answers as CUDA on a machine without a GPU: enough of vLLM's CUDA platform
for ``VllmConfig`` and the compiler (device type, CUDA graphs, the CUDA rule for the IR-op
priority default, vllm/platforms/cuda.py:get_default_ir_op_priority). For CPU tests and the CPU
cold-start benchmark; install it with ``vllm.platforms._current_platform = cuda_like_platform()``
after importing vLLM's compilation modules (their import-time CUDA branches must see the real one)."""
from __future__ import annotations

from typing import Any


def cuda_like_platform() -> Any:
    from vllm.platforms.interface import Platform, PlatformEnum

    class CudaLikePlatform(Platform):
        _enum = PlatformEnum.CUDA
        device_name = "cuda"
        device_type = "cuda"
        dispatch_key = "CUDA"
        ray_device_key = "GPU"
        dist_backend = "nccl"
        device_control_env_var = "CUDA_VISIBLE_DEVICES"

        @classmethod
        def get_compile_backend(cls) -> str:
            return "inductor"

        @classmethod
        def support_static_graph_mode(cls) -> bool:  # CUDA graphs
            return True

        @classmethod
        def get_default_ir_op_priority(cls, vllm_config):  # type: ignore[no-untyped-def]
            from vllm.config.kernel import IrOpPriorityConfig

            cc = vllm_config.compilation_config
            inductor = cc.backend == "inductor" and cc.mode != 0
            return IrOpPriorityConfig.with_default(["native"] if inductor else ["vllm_c", "native"])

    return CudaLikePlatform()
