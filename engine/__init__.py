"""Loads the base model, holds LoRA adapters by version name, and generates; knows nothing of Discord."""

from engine.engine import AdapterLoadError, Completion, CompletionStream, Engine, Sampling
from engine.loading import (
    EMBEDDED_ID,
    EngineError,
    base_model_id,
    embedded_model_dir,
    load_base_model,
    resolve_device,
    resolve_dtype,
)
from engine.prompting import ChatMessage, encode_prompt, render_prompt, trim_to_fit

__all__ = [
    "EMBEDDED_ID",
    "AdapterLoadError",
    "ChatMessage",
    "Completion",
    "CompletionStream",
    "Engine",
    "EngineError",
    "Sampling",
    "base_model_id",
    "embedded_model_dir",
    "encode_prompt",
    "load_base_model",
    "render_prompt",
    "resolve_device",
    "resolve_dtype",
    "trim_to_fit",
]
