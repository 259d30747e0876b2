"""Seed 003 §2 training schemas, field for field (names, defaults and bounds as the seed writes them).

Shared by the ingress (request and response bodies) and the trainer (the job it runs), so both
read one definition. Extra fields are refused (``extra="forbid"``): a misspelt hyperparameter is
a 400, not a silently ignored default.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoRAConfig(_Strict):
    """LoRA configuration"""

    r: int = Field(16, ge=1, le=256, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, le=256)
    lora_dropout: float = Field(0.0, ge=0.0, le=0.5)
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Modules to apply LoRA (checked against the base model's module names; MiniLM: "
                    "query, key, value, dense)",
        min_length=1, max_length=64,
    )
    use_rslora: bool = Field(False, description="Use rank-stabilized LoRA")


class QuantizationConfig(_Strict):
    """Quantization configuration. 4-bit and 8-bit loading need a CUDA GPU (bitsandbytes): a CPU-only
    trainer refuses them (400 ``GPU_REQUIRED``), so a CPU client sends ``load_in_4bit: false``."""

    load_in_4bit: bool = True
    load_in_8bit: bool = False
    bnb_4bit_compute_dtype: str = Field("bfloat16", pattern="^(float16|bfloat16|float32)$")
    bnb_4bit_quant_type: str = Field("nf4", pattern="^(nf4|fp4)$")


class TrainingHyperparameters(_Strict):
    """Training hyperparameters. ``adamw_8bit`` needs a CUDA GPU (bitsandbytes): a CPU-only trainer
    refuses it, so a CPU client sends ``optimizer: "adamw"`` or ``"sgd"``."""

    learning_rate: float = Field(2e-4, gt=0, le=1e-2)
    num_epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(2, ge=1, le=128)
    gradient_accumulation_steps: int = Field(4, ge=1, le=256)
    max_seq_length: int = Field(2048, ge=128, le=32768)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.01, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: str = Field("adamw_8bit", pattern="^(adamw|adamw_8bit|sgd)$")
    lr_scheduler_type: str = Field("linear", pattern="^(linear|cosine|constant)$")
    logging_steps: int = Field(10, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    save_steps: int | None = Field(None, ge=1)
    save_total_limit: int | None = Field(3, ge=1)


class TrainingJobCreate(_Strict):
    """Create training job request"""

    name: str = Field(..., min_length=1, max_length=200)
    base_model: str = Field(..., description="HuggingFace model ID or local path (here: one of the base models the "
                                             "trainer has offline: sentence-transformers/all-MiniLM-L6-v2)",
                            max_length=300)
    dataset_id: str = Field(..., description="Dataset identifier", max_length=200)
    hyperparameters: TrainingHyperparameters = TrainingHyperparameters()
    lora_config: LoRAConfig = LoRAConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    output_dir: str = Field(..., min_length=1, max_length=200)
    eval_dataset_id: str | None = Field(None, max_length=200)
    resume_from_checkpoint: str | None = Field(None, max_length=1000, description=(
        "A TrainingCheckpoint.path of an earlier job (s3://<bucket>/training/<job_id>/checkpoints/...)"))


class TrainingJobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TrainingJobStatus.COMPLETED, TrainingJobStatus.FAILED, TrainingJobStatus.CANCELLED)


class TrainingMetrics(BaseModel):
    """Training metrics"""

    train_loss: float
    eval_loss: float | None = None
    learning_rate: float
    epoch: float
    step: int
    gpu_memory_used_gb: float | None = None
    tokens_per_second: float | None = None
    timestamp: datetime


class CarbonMetrics(BaseModel):
    """Carbon emissions metrics"""

    emissions_kg: float = Field(ge=0)
    energy_kwh: float = Field(ge=0)
    duration_seconds: float = Field(ge=0)
    carbon_intensity: float = Field(ge=0, description="g CO2/kWh")
    location: str | None = None
    breakdown: dict[str, Any] | None = None


class TrainingCheckpoint(BaseModel):
    """Training checkpoint"""

    step: int
    path: str
    loss: float | None = None
    created_at: datetime
    size_bytes: int = Field(ge=0)


class TrainingJob(BaseModel):
    """Training job entity"""

    job_id: str
    name: str
    status: TrainingJobStatus
    progress: float = Field(0.0, ge=0.0, le=1.0)
    base_model: str
    dataset_id: str
    eval_dataset_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None

    hyperparameters: TrainingHyperparameters
    lora_config: LoRAConfig
    quantization: QuantizationConfig
    output_dir: str

    current_epoch: int = 0
    total_epochs: int
    current_step: int = 0
    total_steps: int = 0

    metrics: TrainingMetrics | None = None
    carbon: CarbonMetrics | None = None
    checkpoints: list[TrainingCheckpoint] = []

    model_id: str | None = None  # Set when completed
    # not in the seed: what a resumed run started from, and the key that created the job
    resume_from_checkpoint: str | None = None
    created_by: str | None = None


class TrainingJobList(BaseModel):
    """Paginated training job list"""

    items: list[TrainingJob]
    total: int
    page: int = 1
    page_size: int = 20
    pages: int


class TrainingMetricsHistory(BaseModel):
    """Every ``TrainingMetrics`` a job logged, oldest first (``GET /api/v1/training/jobs/{id}/metrics``)."""

    job_id: str
    items: list[TrainingMetrics]
