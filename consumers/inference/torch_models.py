"""Torch modules behind the built-in models: used once to export ONNX, and as the reference path.

MiniLM-L6 is a 6-layer BERT; it is written out here from the safetensors weights so the
worker does not need ``transformers`` (and its hub client) at all. Importing this module
imports torch: only the exporter and tests do that, never the serving path.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(hidden)), self._split(self.key(hidden)), self._split(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + additive_mask
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        batch, _, seq, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim)
        hidden = self.attn_norm(hidden + self.attn_out(context))
        # BERT's "gelu" is the exact erf form, not the tanh approximation.
        out: torch.Tensor = self.out_norm(hidden + self.output(F.gelu(self.intermediate(hidden))))
        return out


class MiniLMEncoder(nn.Module):
    """BERT encoder + mean pooling over real tokens + L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = int(config["hidden_size"])
        eps = float(config.get("layer_norm_eps", 1e-12))
        self.word_embeddings = nn.Embedding(int(config["vocab_size"]), hidden)
        self.position_embeddings = nn.Embedding(int(config["max_position_embeddings"]), hidden)
        self.token_type_embeddings = nn.Embedding(int(config.get("type_vocab_size", 2)), hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _BertLayer(hidden, int(config["num_attention_heads"]), int(config["intermediate_size"]), eps)
            for _ in range(int(config["num_hidden_layers"]))
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        # Single-segment input: token type 0 everywhere, so its embedding is one constant row.
        hidden = (self.word_embeddings(input_ids) + self.position_embeddings.weight[:seq].unsqueeze(0)
                  + self.token_type_embeddings.weight[0])
        hidden = self.embed_norm(hidden)
        mask = attention_mask.to(hidden.dtype)
        additive = (1.0 - mask)[:, None, None, :] * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            hidden = layer(hidden, additive)
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def _bert_state_dict(weights: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Rename Hugging Face BertModel keys to MiniLMEncoder's."""
    out = {
        "word_embeddings.weight": weights["embeddings.word_embeddings.weight"],
        "position_embeddings.weight": weights["embeddings.position_embeddings.weight"],
        "token_type_embeddings.weight": weights["embeddings.token_type_embeddings.weight"],
        "embed_norm.weight": weights["embeddings.LayerNorm.weight"],
        "embed_norm.bias": weights["embeddings.LayerNorm.bias"],
    }
    names = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense", "output": "output.dense", "out_norm": "output.LayerNorm",
    }
    for i in range(layers):
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{part}"] = weights[f"encoder.layer.{i}.{theirs}.{part}"]
    return out


def load_minilm(model_dir: Path) -> MiniLMEncoder:
    """MiniLMEncoder with the weights of ``model_dir`` (config.json + model.safetensors), in eval mode."""
    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text())
    model = MiniLMEncoder(config)
    weights = load_file(str(model_dir / "model.safetensors"))
    model.load_state_dict(_bert_state_dict(weights, int(config["num_hidden_layers"])), strict=True)
    return model.eval()


class EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 trunk + global average pooling: the 1280-d features before the classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        net: Any = self.net  # the package is untyped; extract_features is its documented API
        features: torch.Tensor = net.extract_features(pixels)
        return features.mean(dim=(2, 3))


def load_efficientnet_lite0(weights_path: Path) -> EfficientNetFeatures:
    """EfficientNet-Lite0 with ImageNet weights from ``weights_path``, in eval mode."""
    import importlib

    lite = importlib.import_module("efficientnet_lite_pytorch")
    net = lite.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return EfficientNetFeatures(net).eval()


def export_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_name: str,
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """Export with the TorchScript-based exporter (opset 17), the path known to work offline here.

    Its deprecation notice and constant-folding notes are expected and silenced: the legacy
    exporter is chosen on purpose (the dynamo exporter needs onnxscript and differs per version).
    """
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


def export_sentence_embedder(model: nn.Module, path: Path) -> None:
    """A MiniLM-style encoder as the txt2embed ONNX contract the workers serve: inputs ``input_ids`` and
    ``attention_mask`` ([batch, sequence] int64), output ``sentence_embedding`` ([batch, dim])."""
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    export_onnx(model, example, path, input_names=["input_ids", "attention_mask"], output_name="sentence_embedding",
                dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                              "sentence_embedding": {0: "batch"}})
