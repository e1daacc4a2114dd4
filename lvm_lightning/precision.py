"""Which devices multiply bfloat16 matrices natively, where bf16 networks are faster rather than emulated."""

from typing import Literal, Union

import torch

BF16Choice = Union[bool, Literal["auto"]]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 matrix hardware: a GPU of compute capability ≥ 8.0 (tensor cores) or a CPU with
    AVX512-BF16 or AMX-BF16 (oneDNN's native kernels); elsewhere bf16 products are emulated, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        # torch's CPU feature table (cpuinfo); a build without it answers False, the safe side.
        features = getattr(torch._C._cpu, "_get_cpu_capability", dict)()
        return bool(features.get("avx512_bf16") or features.get("amx_bf16"))
    return False


def resolve_bf16(choice: BF16Choice, device: torch.device) -> bool:
    """``choice`` for ``device``: True and False as given, "auto" as ``native_bf16(device)``."""
    return native_bf16(device) if choice == "auto" else bool(choice)
