"""One model loader, one code path: everything is an HF model booted through TransformerLens' TransformerBridge.

- `load_model("toy-...")`: an embedded model-organism checkpoint from `data/organism/`.
- `load_model("<hub name>")`: any model TransformerLens supports (Qwen2.5, Qwen3, Llama-2, R1-distill, ...).
- `load_model("<local dir>")`: a saved HF model directory.

Optionally, `transform` rewrites the HF model before bridging (this is how peft LoRA is applied).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .artifacts import PROJECT_ROOT, file_hash
from .errors import ParameterError

ORGANISM_DIR = PROJECT_ROOT / "data" / "organism"
TOKENIZER_SUBDIR = "tokenizer"

#: Real models the book's profiles use (any TransformerLens-supported hub name is accepted too).
KNOWN_HUB_MODELS = (
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen/Qwen2.5-Math-1.5B",
    "Qwen/Qwen2.5-Math-1.5B-Instruct",
    "Qwen/Qwen3-0.6B",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-8B-Base",
    "Qwen/Qwen3-0.6B-Base",
    "Qwen/Qwen3-4B-Base",
    "meta-llama/Llama-2-7b-chat-hf",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
)


class UnknownModelError(ParameterError):
    """The model name is neither an embedded toy, a local directory, nor a hub name (a ValueError)."""


@dataclass
class LoadedModel:
    """A bridged model plus what chapters need to know about it."""

    name: str
    bridge: Any
    hf_model: Any
    tokenizer: Any
    kind: str  # "toy" | "local" | "hub"
    path: Path | None = None
    revision: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return int(self.hf_model.config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.hf_model.config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.hf_model.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def identity(self) -> dict:
        """What provenance records: model name, weights identity (revision or checkpoint hash), tokenizer hash."""
        return {"name": self.name, "kind": self.kind, "weights": self.meta.get("weights"),
                "tokenizer": self.meta.get("tokenizer")}


def toy_models() -> list[str]:
    """Names of the embedded model-organism checkpoints (folders in data/organism with a config.json)."""
    if not ORGANISM_DIR.exists():
        return []
    return sorted(p.name for p in ORGANISM_DIR.iterdir() if (p / "config.json").exists())


def valid_model_choices() -> str:
    return f"embedded toys {toy_models()}, a local HF model directory, or a hub name such as {list(KNOWN_HUB_MODELS)}"


def resolve(name: str) -> tuple[str, Path | None]:
    """Classify a model name as ('toy', dir), ('local', dir) or ('hub', None); fail clearly before any loading."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"model must be a non-empty string; valid choices: {valid_model_choices()}")
    if name.startswith("toy"):
        if name in toy_models():
            return "toy", ORGANISM_DIR / name
        raise UnknownModelError(f"unknown toy model {name!r}; valid choices: {valid_model_choices()}")
    p = Path(name).expanduser()
    if p.exists():
        if (p / "config.json").exists():
            return "local", p
        raise UnknownModelError(f"{name!r} is a path but has no config.json; valid choices: {valid_model_choices()}")
    if name.count("/") == 1 and all(name.split("/")):
        return "hub", None
    raise UnknownModelError(f"unknown model {name!r}; valid choices: {valid_model_choices()}")


def pick_device(device: str | None = None) -> torch.device:
    """cuda if present, else mps, else cpu (unless `device` says otherwise)."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on other accelerators, fp32 on CPU; an explicit dtype wins."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}
        if dtype not in table:
            raise ValueError(f"unknown dtype {dtype!r}; valid choices: {sorted(table)}")
        return table[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def load_tokenizer(kind: str, path: Path | None, name: str, trust_remote_code: bool = False):
    """AutoTokenizer for the model; toy and local dirs may keep it in a `tokenizer/` subfolder."""
    from transformers import AutoTokenizer

    src: str | Path = name
    if path is not None:
        src = path / TOKENIZER_SUBDIR if (path / TOKENIZER_SUBDIR / "tokenizer_config.json").exists() else path
    tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_hf(kind: str, path: Path | None, name: str, device: torch.device, dtype: torch.dtype,
            revision: str | None = None, trust_remote_code: bool = False):
    """The plain HF causal LM with eager attention (so attention patterns are real)."""
    from transformers import AutoModelForCausalLM

    src = str(path) if path is not None else name
    hf = AutoModelForCausalLM.from_pretrained(
        src, dtype=dtype, attn_implementation="eager", revision=revision, trust_remote_code=trust_remote_code
    )
    return hf.to(device).eval()


def bridge(hf_model, tokenizer, name: str):
    """Boot a TransformerBridge around an (already loaded, possibly transformed) HF model. No downloads."""
    from transformer_lens.model_bridge import TransformerBridge

    b = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer)
    b.set_use_attn_result(True)  # exposes hook_result (per-head outputs) alongside hook_z and hook_pattern
    return b


def load_model(
    name: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    transform: Callable[[Any], Any] | None = None,
) -> LoadedModel:
    """Load any supported model through TransformerBridge (see module docstring).

    `trust_remote_code` is off by default and must be asked for explicitly. `transform(hf_model) -> hf_model` runs
    before bridging (e.g. peft LoRA).
    """
    kind, path = resolve(name)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    try:
        tok = load_tokenizer(kind, path, name, trust_remote_code)
        hf = load_hf(kind, path, name, dev, dt, revision, trust_remote_code)
    except OSError as e:  # offline, gated, or a typo in a hub name
        raise UnknownModelError(
            f"could not load {name!r} ({e.__class__.__name__}: {str(e).splitlines()[0]}). Offline machines can only "
            f"load local checkpoints; valid choices: {valid_model_choices()}"
        ) from e
    if transform is not None:
        hf = transform(hf)
    meta: dict = {}
    if path is not None:
        meta["weights"] = file_hash(path.glob("*.safetensors"))
        tdir = path / TOKENIZER_SUBDIR if (path / TOKENIZER_SUBDIR).exists() else path
        meta["tokenizer"] = file_hash(tdir.glob("tokenizer*.json"))
    else:
        meta["weights"] = revision or getattr(hf.config, "_commit_hash", None) or "main"
        meta["tokenizer"] = meta["weights"]
    b = bridge(hf, tok, str(path) if path is not None else name)
    return LoadedModel(name=name, bridge=b, hf_model=hf, tokenizer=tok, kind=kind, path=path, revision=revision,
                       meta=meta)


def load_plain(name: str, device: str | None = None, dtype: str | torch.dtype | None = None,
               attn: str | None = None):
    """(plain HF model, tokenizer) for training and sampling, resolved exactly as `load_model` does (no bridge).

    Train on the plain model, then `rebridge(lm, model)` for tracing/analysis. `attn` sets the attention
    implementation (``"sdpa"`` computes no attention weights: faster sampling and training; ``"eager"``).
    """
    kind, path = resolve(name)
    dev = pick_device(device)
    tok = load_tokenizer(kind, path, name)
    model = load_hf(kind, path, name, dev, pick_dtype(dev, dtype))
    if attn is not None:
        model.set_attn_implementation(attn)
    return model, tok


def rebridge(lm: LoadedModel, hf_model, suffix: str = "") -> LoadedModel:
    """Bridge a modified copy of `lm`'s HF model (fine-tuned, adapted) with the same tokenizer and identity."""
    b = bridge(hf_model, lm.tokenizer, str(lm.path) if lm.path is not None else lm.name)
    meta = dict(lm.meta)
    if suffix:
        meta["variant"] = suffix
    return LoadedModel(name=lm.name, bridge=b, hf_model=hf_model, tokenizer=lm.tokenizer, kind=lm.kind, path=lm.path,
                       revision=lm.revision, meta=meta)


def load_checkpoint(path: str | Path, like: LoadedModel) -> LoadedModel:
    """A training checkpoint folder (e.g. chapter 05's GRPO `checkpoint-<step>`), bridged with `like`'s tokenizer,
    device and dtype. Training never changes the tokenizer, and one re-saved beside the weights by a trainer can
    tokenize the organism's special tokens differently, so `like`'s is used and recorded."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is not a model checkpoint (no config.json)")
    hf = load_hf("local", path, str(path), like.device, next(like.hf_model.parameters()).dtype)
    meta = {"weights": file_hash(path.glob("*.safetensors")), "tokenizer": like.meta.get("tokenizer"),
            "tokenizer_from": like.name}
    return LoadedModel(name=str(path), bridge=bridge(hf, like.tokenizer, str(path)), hf_model=hf,
                       tokenizer=like.tokenizer, kind="local", path=path, meta=meta)


def random_hf_model(arch: str = "qwen2", **overrides):
    """A tiny random-weight HF model of a real architecture, built offline from a config (tests, benchmarks)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    if arch == "qwen3":
        base["head_dim"] = 16
    base.update(overrides)
    archs = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}
    if arch not in archs:
        raise ValueError(f"unknown architecture {arch!r}; valid choices: {sorted(archs)}")
    cfg = AutoConfig.for_model(archs[arch], **base)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


#: Real-size shapes (the HF configs of the released models, weights random): bench/bench_gpu.py and the real-size test.
REAL_CONFIGS = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6, hidden_act="silu"),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6, hidden_act="silu"),
}

_QWEN3 = dict(vocab_size=151936, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, hidden_act="silu")
#: The real profiles' models by hub name: (architecture, config overrides) from each model's published config.json,
#: so that their memory can be planned offline (`support.run --memory`). The R1 distill is counted with untied
#: embeddings (the larger case).
MODEL_SHAPES = {
    "Qwen/Qwen2.5-0.5B-Instruct": ("qwen2", REAL_CONFIGS["qwen2.5-0.5b"]),
    "Qwen/Qwen2.5-0.5B": ("qwen2", REAL_CONFIGS["qwen2.5-0.5b"]),
    "Qwen/Qwen2.5-Math-1.5B-Instruct": ("qwen2", REAL_CONFIGS["qwen2.5-1.5b"]),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": ("qwen2", {**REAL_CONFIGS["qwen2.5-1.5b"],
                                                            "tie_word_embeddings": False}),
    "Qwen/Qwen3-0.6B": ("qwen3", dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                      num_attention_heads=16, tie_word_embeddings=True)),
    "Qwen/Qwen3-4B-Base": ("qwen3", dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                         num_attention_heads=32, tie_word_embeddings=True)),
    "Qwen/Qwen3-8B": ("qwen3", dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                    num_attention_heads=32, tie_word_embeddings=False)),
    "Qwen/Qwen3-8B-Base": ("qwen3", dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                         num_attention_heads=32, tie_word_embeddings=False)),
    "meta-llama/Llama-2-7b-chat-hf": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                                    num_hidden_layers=32, num_attention_heads=32,
                                                    num_key_value_heads=32, tie_word_embeddings=False)),
}


def model_config(name: str) -> Any:
    """The HF config of a `MODEL_SHAPES` model, built offline (no weights, no download)."""
    from transformers import AutoConfig

    if name not in MODEL_SHAPES:
        raise UnknownModelError(f"no offline shape for {name!r}; valid choices: {', '.join(MODEL_SHAPES)}")
    arch, cfg = MODEL_SHAPES[name]
    return AutoConfig.for_model(arch, **cfg)


def save_random_model(out: str | Path, shape: str = "qwen2.5-0.5b", arch: str = "qwen2",
                      dtype: torch.dtype = torch.bfloat16, words_from: str = "toy-qwen2") -> Path:
    """A local model directory (`load_model(out)` loads it) of a real-size shape (`REAL_CONFIGS`) with random
    weights, saved in `dtype`, and the organism's word-level tokenizer, padded with filler words ``w<i>`` to the
    vocabulary, so that the organism's tasks tokenize as they do for the organism and every sampled id decodes.
    Offline stand-in for a real checkpoint: same compute and memory, meaningless outputs."""
    import json

    from transformers import AutoTokenizer

    if shape not in REAL_CONFIGS:
        raise ParameterError(f"unknown shape {shape!r}; valid choices: {', '.join(REAL_CONFIGS)}")
    out = Path(out)
    random_hf_model(arch, **REAL_CONFIGS[shape]).to(dtype).save_pretrained(out)
    src, dst = ORGANISM_DIR / words_from / TOKENIZER_SUBDIR, out / TOKENIZER_SUBDIR
    dst.mkdir(parents=True, exist_ok=True)
    spec = json.loads((src / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab.update({f"w{i}": i for i in range(len(vocab), REAL_CONFIGS[shape]["vocab_size"])})
    (dst / "tokenizer.json").write_text(json.dumps(spec))
    for f in src.iterdir():
        if f.name != "tokenizer.json":
            (dst / f.name).write_text(f.read_text())
    AutoTokenizer.from_pretrained(dst)  # fails here, not in a chapter, if the files do not load
    return out


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
