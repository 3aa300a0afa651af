"""`load_model(name_or_path)`: the organism, a local checkpoint folder or a hub id from the local cache.

Weights load from safetensors only and `trust_remote_code=False` unless asked. bf16 on GPU and fp32 on CPU by
default. After loading, a real checkpoint checks itself on one short dummy item (the lens at the last layer equals
the logits, the audio span decodes to the audio placeholder) and stops with a clear message if it does not.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers

from common.errors import ModalflipError
from models.adapter import ModelAdapter, Prompt
from models.families.base import FamilySpec
from models.families.processor_shim import load_audio_chat_processor
from models.registry import FAMILIES, UNSUPPORTED

ORGANISM_DIR = Path(__file__).parent / "organism" / "model"
PILOT_DIR = Path(__file__).parent / "pilot" / "model"
# the built-in models, by the name every runner's --model takes, with the command that rebuilds each
BUILT_IN = {"organism": ORGANISM_DIR, "organism-pilot": PILOT_DIR}
REBUILD = {"organism": "python -m models.organism.train",
           "organism-pilot": "python -m models.pilot.train"}


def built_in_figure(model: str, name: str) -> Path:
    """Where a measurement of a built-in model is kept by default: `name` in the figures folder beside its weights.
    Any other model has no such folder, so the measuring command needs --out."""
    if model not in BUILT_IN:
        raise ModalflipError("--out is needed for a model that is not built in")
    return BUILT_IN[model].parent / "figures" / name


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ModalflipError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModalflipError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModalflipError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return table[dtype]


def load_model(name_or_path: str = "organism", device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False, self_check: bool = True) -> ModelAdapter:
    """Load a model and wrap it in its family's adapter (see module docstring)."""
    built_in = name_or_path in BUILT_IN
    source = str(BUILT_IN[name_or_path]) if built_in else str(name_or_path)
    if built_in and not (Path(source) / "config.json").exists():
        root = Path(__file__).parent.parent
        folder = Path(source).relative_to(root) if Path(source).is_relative_to(root) else Path(source)
        raise ModalflipError(f"the weights of the built-in {name_or_path!r} are missing from {folder}; rebuild "
                             f"them with: {REBUILD[name_or_path]}")
    if _looks_like_path(source):
        source = str(Path(source).expanduser())
        if not Path(source).exists():
            raise ModalflipError(f"no checkpoint folder at {source}: the path does not exist; pass a folder with "
                                 "config.json, *.safetensors and the processor files, or a hub id in the local cache")
    if Path(source).exists() and not (Path(source) / "config.json").exists():
        raise ModalflipError(f"{source} has no config.json: not a Hugging Face checkpoint folder")
    try:
        config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModalflipError(f"cannot load model {name_or_path!r}: not a local checkpoint folder and not in the "
                             f"local hub cache ({str(err).splitlines()[0]})") from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in FAMILIES:
        why = UNSUPPORTED.get(model_type, "no adapter for this architecture")
        raise ModalflipError(f"model type {model_type!r} is not supported: {why}; supported: "
                             f"{', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model_class = getattr(transformers, family.model_class)
    with _quiet_loading(built_in):
        model = model_class.from_pretrained(source, dtype=torch_dtype, use_safetensors=True,
                                            trust_remote_code=trust_remote_code).to(torch_device).eval()
    processor = load_processor(source, family, model.config, trust_remote_code)
    adapter = ModelAdapter(model, processor, family, model_id=name_or_path)
    if self_check:
        check_adapter(adapter)
    return adapter


@contextmanager
def _quiet_loading(quiet: bool):
    """Hide transformers' "Loading weights" bar for the built-in models (they load in a blink, and the bar would sit
    above every command's own progress); real checkpoints keep it."""
    bars = transformers.utils.logging
    was_enabled = bars.is_progress_bar_enabled()
    if quiet:
        bars.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            bars.enable_progress_bar()


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ("owner/name"): absolute, relative with ./ or ../, or with ~."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).is_absolute() or name.count("/") > 1


def load_processor(source: str, family: FamilySpec, config, trust_remote_code: bool = False):
    """The checkpoint's own processor, or for families that allow it (`FamilySpec.processor_shim`) the stand-in
    built from its tokenizer, feature extractor and chat template when the processor cannot be built here."""
    try:
        processor = transformers.AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (ImportError, TypeError, ValueError, OSError) as err:
        processor, problem = None, (str(err).splitlines() or [type(err).__name__])[0]
    if processor is not None and family.always_shim:
        processor, problem = None, f"{family.name} prompts are rendered by modalflip's stand-in"
    if processor is not None:
        if hasattr(processor, "feature_extractor") and hasattr(processor, "tokenizer"):
            return processor
        problem = f"AutoProcessor gave a {type(processor).__name__}, not an audio processor"
    if not family.processor_shim:
        raise ModalflipError(f"cannot build the {family.name} processor of {source} ({problem}); the checkpoint "
                             "needs its processor files (preprocessor_config.json, tokenizer, chat template)")
    try:
        return load_audio_chat_processor(source, config, family, trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModalflipError(f"cannot build the {family.name} processor of {source} ({problem}), nor its stand-in "
                             f"from tokenizer and feature extractor ({str(err).splitlines()[0]})") from None


BOOKKEEPING = ("transformers_version", "dtype", "torch_dtype", "output_attentions", "output_hidden_states",
               "return_dict", "use_cache")  # config keys that say how a model was loaded or called, not what it is


def _architecture(value):
    """A config dict without its bookkeeping: keys starting with "_" (`_name_or_path`, the folder it was loaded
    from; `_attn_implementation`) and `BOOKKEEPING`, at every level."""
    if isinstance(value, dict):
        return {k: _architecture(v) for k, v in value.items() if not str(k).startswith("_") and k not in BOOKKEEPING}
    return value


def config_hash(adapter: ModelAdapter) -> str:
    """A short hash of the model's architecture config (sizes, layer types, token ids): the same for every copy of
    a model, whatever folder it was loaded from, with which transformers version, in which dtype."""
    text = json.dumps(_architecture(adapter.model.config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(adapter: ModelAdapter) -> str:
    """A hash of the weights that any changed value changes: per parameter its name, shape, first 64 values and
    the exact integer sum of its float32 bit patterns (order-free, so the same on every device; one read of the
    weights on their device, in chunks of 16 M values)."""
    digest = hashlib.sha256()
    for name, param in adapter.model.named_parameters():
        values = param.detach().flatten()
        digest.update(f"{name} {tuple(param.shape)}".encode())
        digest.update(values[:64].float().cpu().numpy().tobytes())
        bit_sum = sum(int(chunk.float().view(torch.int32).sum(dtype=torch.int64)) for chunk in values.split(2**24))
        digest.update(str(bit_sum).encode())
    return digest.hexdigest()[:16]


def model_hash(adapter: ModelAdapter) -> str:
    """Config and weight fingerprint together: ties every result to the weights it was made with (retraining the
    organism, which keeps its config, gives its results a new hash)."""
    return hashlib.sha256((config_hash(adapter) + weights_fingerprint(adapter)).encode()).hexdigest()[:16]


def check_adapter(adapter: ModelAdapter) -> None:
    """The load-time self-check on one 1 s dummy item; a `ModalflipError` naming the family and transformers
    version when the lens at the last layer differs from the logits or the audio span is not the placeholder."""
    from models.forward import lens, run_traced  # forward imports adapter; keep loading importable alone

    prompt = Prompt(messages=[{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Hello."}]}],
                    instruction="Hello.")
    wave = 0.1 * torch.sin(torch.linspace(0, 2000, adapter.sampling_rate))
    with torch.no_grad():
        batch = adapter.build_batch([wave], [prompt])
        trace = run_traced(adapter, batch)
        answer = batch.spans[0].answer
        from_lens = lens(adapter, trace.resid[-1][0, answer]).float()
        from_model = adapter.model(**batch.inputs, use_cache=False).logits[0, answer].float()  # the model's own head
    where = f"{adapter.family.name} with transformers {transformers.__version__}"
    tolerance = 1e-3 if adapter.dtype == torch.float32 else 0.1 * from_model.abs().max().item() + 0.5
    if not torch.allclose(from_lens, from_model, atol=tolerance):
        raise ModalflipError(f"self-check failed for {where}: the logit lens at the last layer differs from the "
                             f"model's logits by {(from_lens - from_model).abs().max().item():.4g}; "
                             "the adapter's module paths do not fit this checkpoint")
    span = batch.spans[0].audio
    ids = batch.inputs["input_ids"][0, span]
    if not bool((ids == adapter.audio_token_id).all()) or span.stop - span.start < 1:
        raise ModalflipError(f"self-check failed for {where}: the audio span does not decode to the audio placeholder")
