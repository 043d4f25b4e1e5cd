"""The PyTorch backend: deterministic algorithms, CUDA memory stats, Keras's foreach Adam.

``jit_compile``: False (the default, as in Keras) runs eagerly; True wraps the step in
``torch.compile``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from harness.backends._base import CompileWatch, Device

MODULE = "torch"
DISTRIBUTIONS = ("torch",)
JIT_DEFAULT = False
JIT_MEANING = {False: "eager", True: "torch.compile of the step"}


def prepare_process(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def enable_determinism() -> str:
    import torch

    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    return "torch.use_deterministic_algorithms"


def gpus() -> list[Device]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        Device("GPU", torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
        for i in range(torch.cuda.device_count())
    ]


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> tuple[int, str] | None:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "gpu:0 peak allocated (torch)"
    return None


def sync(model: Any) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_info() -> dict[str, str | None]:
    """CUDA from ``torch/version.py`` read as text (cuDNN needs the import: see runtime_info)."""
    info: dict[str, str | None] = {"cuda": None, "cudnn": None}
    spec = importlib.util.find_spec("torch")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(loc) / "version.py").read_text()
        except OSError:
            continue
        m = re.search(r"^cuda\b[^=\n]*=\s*['\"]?([^'\"\n]+)['\"]?\s*$", text, re.MULTILINE)
        if m and m.group(1).strip() != "None":
            info["cuda"] = m.group(1).strip()
        break
    return info


def runtime_info() -> dict[str, Any]:
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(cudnn) if cudnn else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "threads": torch.get_num_threads(),
    }


def compile_watch() -> CompileWatch:
    return CompileWatch()


def eval_batch_size(n: int, batch: int) -> int:
    return batch


def fused_adam(base: type) -> type:
    """``base`` on Keras's torch Adam, whose update is a few ``torch._foreach_*`` calls over
    all variables; one call per learning-rate factor instead of one per variable.

    Keras swaps in that Adam only for ``keras.optimizers.Adam`` itself, not for a subclass
    such as the harness's, which would otherwise fall back to per-variable updates.
    """
    from keras.src.backend.torch.optimizers import torch_adam
    from keras.src.utils import torch_utils

    class TorchHarnessAdam(base, torch_adam.Adam):  # type: ignore[misc, valid-type]
        implementation = "keras torch Adam (torch._foreach_*, one call per lr factor)"

        @torch_utils.no_grad
        def _backend_update_step(self, grads: Any, trainable_variables: Any, lr: Any) -> None:
            groups: dict[float, tuple[list[Any], list[Any]]] = {}
            for grad, variable in zip(grads, trainable_variables, strict=True):
                g, v = groups.setdefault(self._factor(variable), ([], []))
                g.append(grad)
                v.append(variable)
            for factor, (g, v) in groups.items():
                self._parallel_update_step(g, v, lr * factor if factor != 1.0 else lr)

    return TorchHarnessAdam
