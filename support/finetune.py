"""Selective Head Fine-Tuning (SHFT) and its baselines (paper 000, Sec. 4, Eq. 4; App. E; Tables 1-2, 6-7).

Regimes (`REGIMES`), all trained by the same `train` loop with identical hyperparameters, prompts and data order:
``base`` (no training), ``wh`` / ``sh`` (SHFT on the wavering / steadfast head set), ``random`` (SHFT on a seeded
random draw of the same size, `random_heads`), ``full`` (every parameter) and ``lora`` (peft, r=8, alpha=16 on
q_proj/v_proj, dropout 0, bias none; injected into the plain HF model before any bridging, `lora_transform`).

SHFT (Eq. 4): only the Q, K, V and O projection slices of the selected heads Θ_H are trained; norms, MLPs,
embeddings, unembedding and every other slice stay at their pre-trained values.

* **GQA policy** (``gqa_policy``, `GQA_POLICIES`). Under grouped-query attention the n_rep = H/G query heads of
  a key/value group share its K and V rows, so "the K and V slices of head (l, h)" needs a rule:

  - ``"ungrouped"`` (default): each selected query head gets its own K and V rows. The attention layers that hold
    a selected head are *ungrouped* first (`ungroup_layers`): k_proj/v_proj are replaced by Linear layers whose
    rows are the group rows repeated per query head and the module's ``num_key_value_groups`` is set to 1 (exactly
    the same function; eager and sdpa both repeat K/V by that attribute). A selected head's K/V deltas then sit on
    its own rows: unselected sibling heads stay untouched, and the budget is the paper's, independent of grouping.
    The trained model keeps those layers ungrouped (wider k/v_proj; the HF config is unchanged unless every layer
    is ungrouped, `ungroup_layers(model)` does all); `load_run` re-ungroups from the saved policy.
  - ``"shared"``: each key/value group (l, g) that contains a selected query head trains its shared K and V rows
    once (the behaviour before the policy existed; runs saved without a policy are loaded so). The unselected
    query heads of those groups (`affected_siblings`) change too, and the count depends on how many groups G a
    head set touches, so equal-size head sets can differ in trainable parameters.
  - ``"qo_only"``: only the Q rows and O columns of the selected heads train; K and V stay frozen.
* **Precision.** Every regime trains fp32 master weights (`MASTER_DTYPE`: the HF weights full SFT updates, the
  LoRA adapters, the SHFT deltas) under one autocast for all (`TrainConfig.precision`: bf16 where supported, fp16
  with loss scaling on other GPUs, none on CPU). Updating bf16 weights directly rounds small steps away (measured:
  one AdamW step at lr 5e-5 left 44.8% of full-SFT weights unchanged) and would favour the fp32 SHFT deltas; merged
  deltas for analysis land in fp32 weights too.
* **Biases.** Qwen2 has q/k/v biases (o_proj has none). With ``include_bias=True`` (default) the bias entries of
  the trained Q and K/V rows train too; ``include_bias=False`` trains weights only.
* **Exact count** (`shft_param_count`), d = hidden size, d_head = head dim, M = |H|, G = number of distinct
  (layer, kv-group) pairs touched, b = 1 when q/k/v biases exist and are trained, else 0:

      ungrouped:  P(H) = 4·d·d_head·M + 3·b·d_head·M
      shared:     P(H) = 2·d·d_head·(M + G) + b·d_head·(M + 2G)
      qo_only:    P(H) = 2·d·d_head·M + b·d_head·M

  Under ``ungrouped`` (and without GQA, where G = M, under ``shared`` too) the count depends on M only, and with no
  biases it is exactly the paper's footnote 2: P = 4·d·d_head·M (Llama-2-7B, M = 30: 4·4096·128·30 = 62.9M), so
  head sets of equal size have "strictly constant" trainable parameter counts.

Implementation: the trainable slices are small zero-initialised `nn.Parameter` deltas (one set per layer) held in
a `SHFT` module that is registered on the HF model as ``model.shft``; forward hooks on q/k/v/o_proj add the slice
contributions (x·ΔQᵀ scattered into the selected output rows; the selected input columns of o_proj times ΔO).
The function is exactly that of the weights W + Δ, gradients reach only Δ, AdamW sees only slice-sized tensors
(no full-size masked copies, no full-size weight gradients), and any standard loop (HF Trainer, accelerate,
DDP) trains it since the deltas are ordinary parameters of the model. `SHFT.merge()` writes W += Δ into the HF
weights and removes the hooks and the module (for saving, bridging and evaluation).

Every regime trains through `support.training.train` and is evaluated by `support.evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ParameterError
from .heads import Head, check_heads
from .training import count_trainable

#: Regime names, in the order of the paper's Table 1.
REGIMES = ("base", "full", "lora", "random", "sh", "wh")
REGIME_LABELS = {"base": "base", "full": "Full SFT", "lora": "LoRA", "random": "Random-head", "sh": "SH-only",
                 "wh": "WH-only"}
HEAD_REGIMES = ("wh", "sh", "random")
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
#: How SHFT treats K/V rows shared by several query heads under GQA (module docstring).
GQA_POLICIES = ("ungrouped", "shared", "qo_only")
#: Weights of every regime while training and when deltas are merged (module docstring, Precision).
MASTER_DTYPE = "float32"
#: Names of the K/V deltas per policy; ``shared`` keeps the names runs had before the policy existed.
KV_NAMES = {"ungrouped": ("k_head", "v_head"), "shared": ("k", "v"), "qo_only": ()}


# ----------------------------------------------------------------------------------------------- regimes
def check_regime(regime: str) -> str:
    """Return `regime` or raise one ValueError naming the valid choices."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; valid choices: {', '.join(REGIMES)}")
    return regime


def footprint(config: Any, regimes: Sequence[str], batch_size: int, seq_len: int, act: str = "fp32",
              n_trainable: int = 0) -> Any:
    """Estimated peak of one optimizer step of the hungriest regime in `regimes` (`support.memory`): full SFT trains
    every parameter, the head and LoRA regimes `n_trainable`, with the same activations; fp32 masters, activations
    at `act` (fp32, bf16, fp16), `batch_size` sequences of `seq_len` tokens."""
    from .memory import Shape, train_footprint

    s = Shape.from_config(config)
    full = "full" in regimes
    what = f"{'full SFT' if full else 'fine-tuning'} step ({act} activations, fp32 masters)"
    return train_footprint(s, s.n_params if full else n_trainable, batch_size, seq_len, act, what=what)


def check_memory(config: Any, regimes: Sequence[str], batch_size: int, seq_len: int, precision: str,
                 device: torch.device | str, n_trainable: int = 0) -> Any:
    """Memory guard before any regime trains: `footprint` under `precision`'s autocast on `device`. Returns the
    footprint, or raises `memory.MemoryBudgetError` naming the batch size that fits."""
    from .memory import guard
    from .training import amp_dtype

    amp = amp_dtype(precision, torch.device(device))
    act = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    return guard(lambda b: footprint(config, regimes, b, seq_len, act, n_trainable), "batch_size", batch_size,
                 device)


def check_gqa_policy(policy: str) -> str:
    """Return `policy` or raise one ParameterError naming the valid choices."""
    if policy not in GQA_POLICIES:
        raise ParameterError(f"unknown gqa_policy {policy!r}; valid choices: {', '.join(GQA_POLICIES)}")
    return policy


# ----------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Attention shapes of an HF decoder (d = hidden size)."""

    d_model: int
    d_head: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    qkv_bias: bool

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The per-layer attention modules (those owning q/k/v/o_proj), in layer order. Plain HF models only."""
    mods = [m for _, m in model.named_modules() if all(hasattr(m, p) for p in PROJ)]
    n = int(model.config.num_hidden_layers)
    if len(mods) != n:
        raise ValueError(f"found {len(mods)} attention modules with {PROJ} for {n} layers; apply SHFT to the plain "
                         "HF model (before bridging); supported: Qwen2, Qwen3, Llama-style decoders")
    return mods


def _linear(mod: nn.Module) -> nn.Module:
    """The underlying nn.Linear (unwraps a peft LoRA layer's `base_layer`)."""
    return getattr(mod, "base_layer", mod)


def geometry(model: nn.Module) -> Geometry:
    """Read the attention geometry from the HF config (head_dim when the config has one, else d/H); also works on a
    bridged model."""
    c = model.config
    n_heads = int(c.num_attention_heads)
    d_head = int(getattr(c, "head_dim", None) or c.hidden_size // n_heads)
    q = next(m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "q_proj" in n.split(".")[-2:])
    return Geometry(d_model=int(c.hidden_size), d_head=d_head, n_layers=int(c.num_hidden_layers), n_heads=n_heads,
                    n_kv_heads=int(getattr(c, "num_key_value_heads", None) or n_heads),
                    qkv_bias=getattr(q, "bias", None) is not None)


def kv_groups(heads: Sequence[Head], geom: Geometry) -> list[Head]:
    """Distinct (layer, kv-group) pairs that contain a selected query head."""
    return sorted({(l, h // geom.group_size) for l, h in heads})


def affected_siblings(heads: Sequence[Head], geom: Geometry, gqa_policy: str = "shared") -> list[Head]:
    """Unselected query heads whose K/V rows SHFT trains too: under ``shared``, the other query heads of every
    touched key/value group; none under ``ungrouped`` and ``qo_only``."""
    if check_gqa_policy(gqa_policy) != "shared":
        return []
    heads = check_heads(heads, geom.n_layers, geom.n_heads)
    gs, sel = geom.group_size, set(heads)
    return [(l, g * gs + i) for l, g in kv_groups(heads, geom) for i in range(gs) if (l, g * gs + i) not in sel]


def shft_param_count(heads: Sequence[Head], geom: Geometry, include_bias: bool = True,
                     gqa_policy: str = "ungrouped") -> int:
    """Exact SHFT trainable-parameter count P(H) under `gqa_policy` (paper 000 Eq. 4; module docstring)."""
    check_gqa_policy(gqa_policy)
    heads = check_heads(heads, geom.n_layers, geom.n_heads)
    m = len(heads)
    kv = {"ungrouped": m, "shared": len(kv_groups(heads, geom)), "qo_only": 0}[gqa_policy]
    b = int(include_bias and geom.qkv_bias)
    return 2 * geom.d_model * geom.d_head * (m + kv) + b * geom.d_head * (m + 2 * kv)


# ----------------------------------------------------------------------------------------------- ungrouping
def _repeat_rows(t: torch.Tensor, rep: int, d_head: int) -> torch.Tensor:
    """Rows [G·d_head, ...] -> [G·rep·d_head, ...], each group's block repeated `rep` times (as repeat_kv does)."""
    return t.reshape(-1, d_head, *t.shape[1:]).repeat_interleave(rep, 0).reshape(-1, *t.shape[1:])


@torch.no_grad()
def _ungroup_attention(attn: nn.Module, d_head: int) -> None:
    rep = int(attn.num_key_value_groups)
    if rep == 1:
        return
    for name in ("k_proj", "v_proj"):
        old = getattr(attn, name)
        if type(old) is not nn.Linear:
            raise ValueError(f"cannot ungroup {type(old).__name__} {name}; ungroup the plain HF model (no adapters)")
        new = nn.Linear(old.in_features, old.out_features * rep, bias=old.bias is not None, device="meta")
        new.weight = nn.Parameter(_repeat_rows(old.weight, rep, d_head), requires_grad=old.weight.requires_grad)
        if old.bias is not None:
            new.bias = nn.Parameter(_repeat_rows(old.bias, rep, d_head), requires_grad=old.bias.requires_grad)
        setattr(attn, name, new)
    attn.num_key_value_groups = 1


def ungroup_layers(model: nn.Module, layers: Sequence[int] | None = None) -> list[int]:
    """Give every query head of `layers` (default: all) its own K/V rows, in place and exactly: k_proj/v_proj rows
    repeated per query head, ``num_key_value_groups`` = 1. When no grouped layer is left, the config says so
    (``num_key_value_heads`` = H). Returns the layers that were grouped before."""
    geom = geometry(model)
    attns = attention_modules(model)
    todo = [l for l in (range(len(attns)) if layers is None else layers) if attns[l].num_key_value_groups > 1]
    for l in todo:
        _ungroup_attention(attns[l], geom.d_head)
    if all(a.num_key_value_groups == 1 for a in attns):
        model.config.num_key_value_heads = geom.n_heads
    return todo


# ----------------------------------------------------------------------------------------------- SHFT
def _rows(units: Sequence[int], d_head: int, device) -> torch.Tensor:
    return torch.tensor([u * d_head + i for u in units for i in range(d_head)], dtype=torch.long, device=device)


class LayerDeltas(nn.Module):
    """Trainable slice deltas of one layer: ΔQ and ΔK/ΔV rows [r, d], ΔO columns [d, r], optional bias deltas.

    `kv_units` index the K/V heads of k/v_proj as they are (groups, or query heads of an ungrouped layer) and
    `kv_names` name their deltas (`KV_NAMES`: the names tell the policy apart in saved runs); none: ``qo_only``."""

    def __init__(self, attn: nn.Module, q_heads: Sequence[int], kv_units: Sequence[int], geom: Geometry,
                 include_bias: bool, dtype: torch.dtype, kv_names: Sequence[str] = ("k", "v")):
        super().__init__()
        dev = _linear(attn.q_proj).weight.device
        self.register_buffer("q_idx", _rows(q_heads, geom.d_head, dev), persistent=True)
        self.register_buffer("kv_idx", _rows(kv_units, geom.d_head, dev), persistent=True)
        nq, nkv, d = len(self.q_idx), len(self.kv_idx), geom.d_model
        kv_names = tuple(kv_names) if nkv else ()
        zeros = lambda *s: nn.Parameter(torch.zeros(*s, device=dev, dtype=dtype))  # noqa: E731
        bias = include_bias and geom.qkv_bias
        #: (delta name, projection, row-index buffer) of every row-sliced projection
        self.slots = [("q", "q_proj", "q_idx")] + [(n, p, "kv_idx") for n, p in zip(kv_names, ("k_proj", "v_proj"))]
        for name, _, idx in self.slots:  # parameter order as before the policy existed (resumable checkpoints)
            setattr(self, name, zeros(len(getattr(self, idx)), d))
        self.o = zeros(d, nq)
        for name, _, idx in self.slots:
            setattr(self, f"{name}_bias", zeros(len(getattr(self, idx))) if bias else None)
        self.attn = [attn]  # a list, so the attention module is not registered as a submodule
        self.handles: list = []

    def _rows_hook(self, name: str, idx_name: str) -> Callable:
        def hook(mod, args, out):
            x = args[0]
            w, b = getattr(self, name), getattr(self, f"{name}_bias")
            extra = F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))
            return out.index_add(-1, getattr(self, idx_name), extra.to(out.dtype))
        return hook

    def _o_hook(self, mod, args, out):
        x = args[0].index_select(-1, self.q_idx)
        return out + F.linear(x, self.o.to(x.dtype)).to(out.dtype)

    def attach(self) -> None:
        a = self.attn[0]
        self.handles = [getattr(a, proj).register_forward_hook(self._rows_hook(name, idx))
                        for name, proj, idx in self.slots] + [a.o_proj.register_forward_hook(self._o_hook)]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @torch.no_grad()
    def merge(self) -> None:
        """W[rows] += Δ in the HF weights (q/k/v rows, o columns, biases)."""
        a = self.attn[0]
        for name, proj, idx_name in self.slots:
            lin, idx = _linear(getattr(a, proj)), getattr(self, idx_name)
            lin.weight.index_add_(0, idx, getattr(self, name).to(lin.weight.dtype))
            b = getattr(self, f"{name}_bias")
            if b is not None:
                lin.bias.index_add_(0, idx, b.to(lin.bias.dtype))
        o = _linear(a.o_proj)
        o.weight.index_add_(1, self.q_idx, self.o.to(o.weight.dtype))


class SHFT(nn.Module):
    """All layers' slice deltas for a head set; registered on the HF model as `model.shft` while active."""

    def __init__(self, model: nn.Module, heads: Sequence[Head], include_bias: bool = True,
                 dtype: torch.dtype = torch.float32, gqa_policy: str = "ungrouped"):
        super().__init__()
        self.gqa_policy = check_gqa_policy(gqa_policy)
        self.geom = geometry(model)
        self.heads = check_heads(heads, self.geom.n_layers, self.geom.n_heads)
        self.include_bias = include_bias
        self.siblings = affected_siblings(self.heads, self.geom, gqa_policy)
        attns = attention_modules(model)
        by_layer: dict[int, list[int]] = {}
        for l, h in self.heads:
            by_layer.setdefault(l, []).append(h)
        if gqa_policy == "ungrouped":
            ungroup_layers(model, sorted(by_layer))
        self.layers = nn.ModuleDict({str(l): LayerDeltas(attns[l], hs, self._kv_units(attns[l], hs), self.geom,
                                                         include_bias, dtype, KV_NAMES[gqa_policy])
                                     for l, hs in sorted(by_layer.items())})
        self.model = [model]

    def _kv_units(self, attn: nn.Module, q_heads: Sequence[int]) -> list[int]:
        """Which K/V heads of `attn`'s k/v_proj train for the selected query heads (GQA policy)."""
        if self.gqa_policy == "qo_only":
            return []
        rep = int(getattr(attn, "num_key_value_groups", 1))
        return sorted({h // rep for h in q_heads})

    def deltas(self) -> dict[str, torch.Tensor]:
        """The trainable deltas and their row indices (a state dict; save with `artifacts.write_tensors`)."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def merge(self) -> nn.Module:
        """Write W += Δ into the HF weights, remove hooks and the `shft` module; returns the plain HF model."""
        for ld in self.layers.values():
            ld.merge()
            ld.detach()
        model = self.model[0]
        if getattr(model, "shft", None) is self:
            del model.shft
        return model


def apply_shft(model: nn.Module, heads: Sequence[Any], include_bias: bool = True,
               dtype: torch.dtype = torch.float32, gqa_policy: str = "ungrouped") -> SHFT:
    """Freeze `model` entirely and attach trainable Q/K/V/O slice deltas for `heads` (Eq. 4; `gqa_policy` above).

    Works on a plain HF model; the deltas become parameters of `model` (as `model.shft`), so `model.parameters()`
    with requires_grad yields exactly the slices for any optimizer or standard training loop. Under ``ungrouped``
    the layers holding a selected head are ungrouped in place first (same function, wider k/v_proj).
    """
    check_gqa_policy(gqa_policy)
    if getattr(model, "shft", None) is not None:
        raise ValueError("model already has SHFT deltas attached; merge() them first")
    for p in model.parameters():
        p.requires_grad_(False)
    shft = SHFT(model, heads, include_bias, dtype, gqa_policy)
    model.add_module("shft", shft)
    for ld in shft.layers.values():
        ld.attach()
    return shft


# ----------------------------------------------------------------------------------------------- baselines
def lora_config(r: int = 8, alpha: int = 16, targets: Sequence[str] = ("q_proj", "v_proj")):
    """App. E LoRA: rank 8, alpha 16 on q_proj/v_proj of every layer, dropout 0, bias none."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")


def apply_lora(model: nn.Module, r: int = 8, alpha: int = 16, targets: Sequence[str] = ("q_proj", "v_proj")):
    """Inject peft LoRA adapters in place (same HF class, so it bridges); only adapter weights train."""
    from peft import inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    model = inject_adapter_in_model(lora_config(r, alpha, targets), model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


def lora_transform(r: int = 8, alpha: int = 16, targets: Sequence[str] = ("q_proj", "v_proj")) -> Callable:
    """`load_model(name, transform=lora_transform())`: LoRA applied to the HF model before bridging."""
    return lambda model: apply_lora(model, r, alpha, targets)


def lora_param_count(geom: Geometry, r: int = 8) -> int:
    """LoRA r on q_proj and v_proj in every layer: r·(d_in + d_out) per module."""
    q = r * (geom.d_model + geom.n_heads * geom.d_head)
    v = r * (geom.d_model + geom.n_kv_heads * geom.d_head)
    return geom.n_layers * (q + v)


@dataclass
class Prepared:
    """A model made ready for one regime: what trains, how many parameters, and how to finish."""

    regime: str
    model: nn.Module
    heads: list[Head] = field(default_factory=list)
    shft: SHFT | None = None
    #: The GQA policy of a head regime (None otherwise) and the unselected heads that train too (``shared`` policy:
    #: `affected_siblings`), taken from the SHFT module when prepared: `finish` may merge and drop that module.
    gqa_policy: str | None = field(init=False, default=None)
    siblings: list[Head] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.shft is not None:
            self.gqa_policy, self.siblings = self.shft.gqa_policy, list(self.shft.siblings)

    @property
    def n_trainable(self) -> int:
        return count_trainable(self.model)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What to save for this regime: SHFT deltas, LoRA adapter weights, nothing for base/full."""
        if self.shft is not None:
            return self.shft.deltas()
        if self.regime == "lora":
            return {n: p.detach() for n, p in self.model.named_parameters() if "lora_" in n}
        return {}

    def finish(self, merge: bool | None = None) -> nn.Module:
        """Freeze, eval mode, and merge SHFT deltas into the weights (LoRA adapters stay live, as peft runs them).

        `merge=None` merges only fp32 weights: adding small deltas to bf16/fp16 weights would round them away,
        so there the hooks stay live instead (the model then computes exactly W + Δ in the forward pass).
        """
        if self.shft is not None:
            w = _linear(attention_modules(self.model)[0].q_proj).weight
            if merge or (merge is None and w.dtype == torch.float32):
                self.shft.merge()
                self.shft = None
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self.model.eval()


def prepare(regime: str, model: nn.Module, heads: Sequence[Any] | None = None, include_bias: bool = True,
            lora_r: int = 8, lora_alpha: int = 16, gqa_policy: str = "ungrouped") -> Prepared:
    """Freeze/unfreeze `model` for `regime`; head regimes need `heads` (random: pass `random_heads(...)`) and train
    under `gqa_policy` (module docstring)."""
    check_regime(regime)
    check_gqa_policy(gqa_policy)
    if regime in HEAD_REGIMES:
        if heads is None:
            raise ValueError(f"regime {regime!r} needs a head set; head regimes: {', '.join(HEAD_REGIMES)}")
        shft = apply_shft(model, heads, include_bias, gqa_policy=gqa_policy)
        return Prepared(regime, model, shft.heads, shft)
    if regime == "lora":
        return Prepared(regime, apply_lora(model, lora_r, lora_alpha))
    for p in model.parameters():
        p.requires_grad_(regime == "full")
    return Prepared(regime, model)


def saved_policy(names: Sequence[str], params: Mapping[str, Any] | None = None) -> str:
    """The GQA policy of a saved SHFT run: from its provenance `params` when recorded, else from its delta names
    (`KV_NAMES`; runs saved before the policy existed have ``k``/``v`` deltas: ``shared``)."""
    if params and params.get("gqa_policy"):
        return check_gqa_policy(params["gqa_policy"])
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    return next((p for p, kv in KV_NAMES.items() if kv and kv[0] in leaves), "qo_only")


def _check_saved_policy(out: Path, gqa_policy: str) -> None:
    """A finished run in `out` must have been trained under the same GQA policy (its deltas have other shapes)."""
    from .artifacts import read_tensors

    path = Path(out) / "final.safetensors"
    if path.exists():
        tensors, prov = read_tensors(path)
        saved = saved_policy(list(tensors), prov.get("params"))
        if saved != gqa_policy:
            raise ValueError(f"{out} holds a run trained with gqa_policy={saved!r}, not {gqa_policy!r}; "
                             "use a fresh output directory")


# ----------------------------------------------------------------------------------------------- one regime
def run_name(regime: str, heads: Sequence[Head], train_seed: int, tag: str = "") -> str:
    """Run-directory name of one training run, e.g. `wh-M6-s0` or `full-s1`."""
    return f"{regime}{tag}-M{len(heads)}-s{train_seed}" if heads else f"{regime}-s{train_seed}"


def run_regime(model_name: str, regime: str, train_items: Sequence[Any], eval_items: Sequence[Any], cfg: Any,
               out: Path, prov: Mapping[str, Any], heads: Sequence[Any] | None = None, *,
               template: str = "model", max_new_tokens: int = 256,
               lora_r: int = 8, lora_alpha: int = 16, ppl_texts: Sequence[Any] | None = None,
               keep: bool = False, eval_batch_size: int = 64, gqa_policy: str = "ungrouped",
               val_items: Sequence[Any] | None = None) -> tuple[dict, nn.Module | None]:
    """Train one regime from a fresh copy of the model, save what it trained, evaluate it: (result row, model).

    A finished run in `out` is reloaded instead of retrained (`support.training.train`). The row holds accuracy,
    macro recall and F1, invalid answers, trainable parameters, the GQA policy of head regimes and how many
    unselected heads train with them (``shared``: `affected_siblings`), the final loss, the step whose state was
    kept (with `val_items` and `cfg.eval_every`: the lowest validation loss, App. E; else the last) and, with
    `ppl_texts`, perplexity (`evaluation.perplexity`: texts, or prompt-masked examples). The policy is saved in the
    provenance, so `load_run` rebuilds the same model.
    `keep=True` returns the model too, with SHFT deltas merged (tracing reads W_O from the weights).
    Under a multi-process launch every rank trains (`support.training.train`: DDP); only rank 0 writes the adapter
    and evaluates (the other ranks' rows leave the evaluation columns None).
    """
    from .artifacts import write_tensors
    from .evaluation import evaluate_mc, perplexity
    from .models import load_plain
    from .training import build_dataset, process_rank, train

    check_regime(regime)
    check_gqa_policy(gqa_policy)
    head_regime = regime in HEAD_REGIMES
    if head_regime:
        _check_saved_policy(out, gqa_policy)
    hf, tok = load_plain(model_name, dtype=MASTER_DTYPE)  # every regime: fp32 masters, cfg.precision's autocast
    torch.manual_seed(cfg.seed)  # LoRA's A initialisation
    prep = prepare(regime, hf, heads, lora_r=lora_r, lora_alpha=lora_alpha, gqa_policy=gqa_policy)
    policy = {"gqa_policy": gqa_policy} if head_regime else {}
    prov = {**prov, "params": {**prov.get("params", {}), "regime": regime, "heads": prep.heads,
                               "train_seed": cfg.seed, **policy}}
    n_trainable = prep.n_trainable
    val = build_dataset(val_items, tok, cfg.max_length, template) if val_items else None
    res = train(hf, build_dataset(train_items, tok, cfg.max_length, template), cfg,
                out_dir=out if n_trainable else None, prov=prov, val_examples=val)
    state = prep.trainable_state()
    evaluate = process_rank() == 0
    if state and evaluate:
        write_tensors(Path(out) / "adapter.safetensors", state, prov)
    model = prep.finish()
    ev = (evaluate_mc(model, tok, eval_items, template, max_new_tokens, batch_size=eval_batch_size) if evaluate
          else dict.fromkeys(("acc", "rec", "f1", "n_invalid")))
    row = {"regime": REGIME_LABELS[regime], "key": regime, "seed": cfg.seed, "M": len(prep.heads) or None,
           "trainable": n_trainable, "gqa policy": prep.gqa_policy, "siblings trained": len(prep.siblings),
           "acc": ev["acc"], "rec": ev["rec"], "f1": ev["f1"], "invalid": ev["n_invalid"],
           "precision": cfg.precision, "final loss": res.final_loss, "kept step": res.best_step or res.steps,
           "best val loss": min((r["val_loss"] for r in res.val_log), default=None),
           "train s": round(res.seconds, 1)}
    if ppl_texts is not None:
        row["ppl"] = perplexity(model, tok, ppl_texts, cfg.max_length) if evaluate else None
    if not keep:
        return row, None
    if prep.shft is not None:
        prep.finish(merge=True)
    return row, model


def regime_table(df: Any, tasks: Sequence[str]) -> Any:
    """Table 1's layout: regimes as rows (the paper's order), (task, metric) columns for rec, f1, acc and invalid."""
    order = [REGIME_LABELS[r] for r in REGIMES]
    t = df.pivot_table(index="regime", columns="task", values=["rec", "f1", "acc", "invalid"], aggfunc="first")
    t = t.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0)
    cols = [(task, m) for task in tasks for m in ("rec", "f1", "acc", "invalid")]
    return t.reindex(index=order)[cols]


def load_run(model_name: str, out: Path | str, expect_model: Mapping[str, Any] | None = None,
             dtype: str = "float32", ungroup_all: bool = False) -> tuple[nn.Module, Any, dict]:
    """Rebuild a finished training run of `run_regime` from its directory (`final.safetensors`, whose provenance
    names the regime, heads and GQA policy): (plain HF model in eval mode with SHFT deltas merged, tokenizer,
    provenance). The policy comes from the provenance or the delta names (`saved_policy`; runs saved before it
    existed trained under ``shared``); ``ungrouped`` runs come back with their trained layers ungrouped, as
    `Prepared.finish` leaves them. `ungroup_all=True` ungroups every layer (config ``num_key_value_heads`` = H):
    TransformerBridge's split q/k/v inputs (EAP, `support.circuits`) need one K/V head count for all layers.

    `expect_model`: the identity of `model_name` (ProvenanceError if the run trained another model)."""
    from .artifacts import read_tensors
    from .models import load_plain
    from .training import _load_params

    path = Path(out) / "final.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no finished training run in {out} (missing final.safetensors)")
    tensors, prov = read_tensors(path, expect_model=expect_model)
    params = prov.get("params", {})
    hf, tok = load_plain(model_name, dtype=dtype)
    policy = saved_policy(list(tensors), params) if params["regime"] in HEAD_REGIMES else "ungrouped"
    prep = prepare(params["regime"], hf, params.get("heads") or None, gqa_policy=policy)
    _load_params(hf, tensors, Path(out))
    model = prep.finish(merge=True)
    if ungroup_all:
        ungroup_layers(model)
    return model, tok, prov


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m support.finetune` (or `accelerate launch -m support.finetune` on several GPUs): one regime of
    chapter 04 trained with App. E's recipe and evaluated, into `--out` (resumable; a finished run is reused)."""
    import argparse

    from .artifacts import provenance
    from .heads import load_head_set
    from .scoring import family
    from .tasks import DATASETS, load_task
    from .training import PRECISIONS, TrainConfig, process_rank

    ap = argparse.ArgumentParser(prog="python -m support.finetune", description=main.__doc__)
    ap.add_argument("--model", required=True, help="toy name, local directory or hub name")
    ap.add_argument("--task", required=True, choices=sorted(DATASETS))
    ap.add_argument("--regime", required=True, choices=list(REGIMES))
    ap.add_argument("--heads", type=Path, help="head set JSON (chapter 02's head_sets/<kind>.json): wh, sh, random")
    ap.add_argument("--gqa-policy", default="ungrouped", choices=list(GQA_POLICIES))
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1, help="per optimizer micro-batch, over all processes")
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--precision", default="auto", choices=list(PRECISIONS))
    ap.add_argument("--save-every", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--template", default="model")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if (a.regime in HEAD_REGIMES) != (a.heads is not None):
        ap.error(f"--heads is needed by the head regimes ({', '.join(HEAD_REGIMES)}) and only by them")
    heads = load_head_set(a.heads, None).heads if a.heads else None  # provenance: the run records the heads
    cfg = TrainConfig(lr=a.lr, epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size,
                      grad_accum=a.grad_accum, max_length=a.max_length, seed=a.seed, save_every=a.save_every,
                      precision=a.precision).validate()
    train_items = [it for it in load_task(a.task, "train", a.n_train).items if family(it) == "letter"]
    eval_items = [it for it in load_task(a.task, "test", a.n_eval).items if family(it) == "letter"]
    if not train_items or not eval_items:
        ap.error(f"task {a.task!r} has no multiple-choice items: chapter 04's regimes train letter answers")
    prov = provenance({"name": a.model}, a.task, [str(it.id) for it in train_items],
                      {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()})
    row, _ = run_regime(a.model, a.regime, train_items, eval_items, cfg, a.out, prov, heads, template=a.template,
                        max_new_tokens=a.max_new_tokens, gqa_policy=a.gqa_policy)
    if process_rank() == 0:
        print(f"{row['regime']}: accuracy {row['acc']:.3f}, final loss {row['final loss']:.4f}, "
              f"{row['trainable']:,} trainable parameters, {row['train s']} s; {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
