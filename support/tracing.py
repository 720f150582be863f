"""Dynamic entropy tracing: the head-wise option readout at every decoding step (paper 000, Sec. 3.1-3.2, Eq. 1-3;
App. F stages 1-2).

At every greedy decoding step t (`support.decoding.greedy_decode`) a hook copies every head's `hook_z` at the newest
position ([L, H, d_head] per step); after decoding, `support.readout` turns them into option logits [T, L, H, |K|]
and entropies [T, L, H] in one batched contraction. Traces are saved one example at a time with their provenance,
so a long tracing run resumes where it stopped. Probe sets (Sec. 3.3, D_probe) come from the organism's tasks or the
real multiple-choice datasets.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .artifacts import ProvenanceError, provenance, read_json, read_tensors, write_json, write_tensors
from .decoding import DecodeConfig, Decoded, LoopDetector, encode_prompt, eos_ids, greedy_decode
from .readout import OptionSet, Readout, TopK, build_readout, check_norm, entropy, readout_logits
from .scoring import parse


# ----------------------------------------------------------------------------------------------- tracing
@dataclass
class Trace:
    """One traced example: head-wise option logits [T, L, H, |K|], entropy [T, L, H] and the generation."""

    id: str
    logits: torch.Tensor
    entropy: torch.Tensor
    tokens: list[int]
    text: str
    answer: str | None
    stop_reason: str
    labels: tuple[str, ...]
    option_ids: torch.Tensor  # [|K|] first token id per label, or [T, k] for dynamic top-k
    final_logits: torch.Tensor  # [T, |K|] the model's own next-token logits on the option tokens
    meta: dict = field(default_factory=dict)

    @property
    def T(self) -> int:
        return int(self.entropy.shape[0])


class _Recorder:
    """hook_z hooks that copy the newest position's per-head inputs into a preallocated [cap, L, H, d_head]."""

    def __init__(self, lm, cap: int):
        self.t, self.cap, self.L = 0, cap, lm.n_layers
        self.Z: torch.Tensor | None = None
        self.points = [lm.bridge.blocks[l].attn.hook_z for l in range(self.L)]

    def _fn(self, layer: int) -> Callable:
        def fn(z: torch.Tensor, hook=None) -> None:
            if self.Z is None:
                self.Z = z.new_zeros(self.cap, self.L, z.shape[-2], z.shape[-1])
            self.Z[self.t, layer].copy_(z[0, -1])
        return fn

    @contextmanager
    def attached(self) -> Iterator["_Recorder"]:
        handles = [hp.add_hook(self._fn(l)) for l, hp in enumerate(self.points)]
        try:
            yield self
        finally:
            for hp, h in zip(self.points, handles):
                h.hook.remove()
                hp.fwd_hooks = [x for x in hp.fwd_hooks if x is not h]


def _final_gather(opts: OptionSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat token ids of all labels and the [n_ids, |K|] matrix aggregating their logits per label."""
    flat, cols, w = [], [], []
    for k, ids in enumerate(opts.token_ids):
        use = ids[:1] if opts.aggregate == "first" else ids
        for i in use:
            flat.append(i)
            cols.append(k)
            w.append(1.0 / len(use) if opts.aggregate == "mean" else 1.0)
    agg = torch.zeros(len(flat), len(opts))
    agg[torch.arange(len(flat)), torch.tensor(cols)] = torch.tensor(w)
    return torch.tensor(flat), agg


@torch.no_grad()
def trace(lm, prompt: str, options: Any = "A-D", norm: str = "raw", beta: float = 1.0,
          decode: DecodeConfig | None = None, readout: Readout | None = None, id: str = "",
          **option_kw) -> Trace:
    """Greedy-decode `prompt` and record the head-wise option readout at every step (Eq. 1-3).

    `options`: "A-D", "A-E", a named or custom label list, an OptionSet, or TopK(k) / "topk:k" (App. H.5 path 1).
    `norm`: "raw" (paper) or "final_norm" (final RMSNorm on each head's own output; see the module docstring).
    Pass a prebuilt `readout` (build_readout) to reuse the precomputed weights across examples.
    """
    ro = readout or build_readout(lm, options, norm, beta, **option_kw)
    cfg = decode or DecodeConfig()
    ids = encode_prompt(lm, prompt)
    rec = _Recorder(lm, cfg.cap)
    dynamic = isinstance(ro.options, TopK)
    if not dynamic:
        flat, agg = _final_gather(ro.options)
        flat = flat.to(ids.device)
    picks: list = []  # per step: (top-k values, ids) when dynamic, else the option tokens' final logits

    def on_step(t: int, logits: torch.Tensor) -> None:
        rec.t = t + 1
        picks.append(logits.topk(ro.options.k) if dynamic else logits[flat])

    with rec.attached():
        dec = greedy_decode(lm, ids, cfg, on_step=on_step)
    T = len(dec.tokens)
    Z = rec.Z[:T].float().cpu()
    if dynamic:
        option_ids = torch.stack([p.indices for p in picks]).cpu()  # [T, k]
        final = torch.stack([p.values for p in picks]).float().cpu()
        logits = readout_logits(ro, Z, option_ids)
    else:
        option_ids = torch.tensor([t[0] for t in ro.options.token_ids])
        final = torch.stack(picks).float().cpu() @ agg
        logits = readout_logits(ro, Z)
    text = lm.tokenizer.decode(dec.tokens, skip_special_tokens=True)
    labels = tuple(ro.options.labels)
    return Trace(id=id, logits=logits, entropy=entropy(logits, ro.beta), tokens=dec.tokens, text=text,
                 answer=parse(text, labels), stop_reason=dec.stop_reason, labels=labels, option_ids=option_ids,
                 final_logits=final,
                 meta={"prompt_len": dec.prompt_len, "extended": dec.extended})


@torch.no_grad()
def plain_decode(lm, prompt: str, decode: DecodeConfig | None = None) -> Decoded:
    """Untraced greedy decoding: the very same KV-cache loop as `trace`, without hooks (the benchmark baseline)."""
    return greedy_decode(lm, encode_prompt(lm, prompt), decode)


@torch.no_grad()
def naive_trace(lm, prompt: str, readout: Readout, decode: DecodeConfig | None = None) -> tuple[torch.Tensor, list]:
    """Reference (slow) readout: `run_with_cache` on the whole sequence at every step, per-head `hook_result`
    projected through the full unembedding, then restricted to K. Returns (logits [T, L, H, |K|], tokens).

    Independent of the fast path (no KV cache, no precomputed products); the tests compare the two.
    """
    cfg = decode or DecodeConfig()
    if isinstance(readout.options, TopK):
        raise ValueError("naive_trace supports fixed option sets only")
    ids = encode_prompt(lm, prompt)
    stop_ids, detector = eos_ids(lm), LoopDetector(cfg.loop_window, cfg.loop_ratio)
    W_U = readout.W_U  # full float32 copy: the naive method projects onto the whole vocabulary
    A = readout.options.matrix(W_U.shape[1])
    names = [f"blocks.{l}.attn.hook_result" for l in range(lm.n_layers)]
    b, prev = lm.bridge, bool(getattr(lm.bridge.cfg, "use_attn_result", False))
    b.set_use_attn_result(True)
    rows, out = [], []
    try:
        for _ in range(cfg.cap):
            logits, cache = b.run_with_cache(ids, names_filter=lambda n: n in names)
            o = torch.stack([cache[n][0, -1] for n in names]).float().cpu()  # [L, H, d_model]
            if readout.norm == "final_norm":
                o = readout.gamma * o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + readout.eps)
            rows.append((o @ W_U) @ A)  # full-vocabulary logit lens, then restrict to K
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt in stop_ids or detector(out):
                break
            ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], dim=1)
    finally:
        b.set_use_attn_result(prev)
    return torch.stack(rows), out


# ----------------------------------------------------------------------------------------------- storage
def trace_params(ro: Readout, decode: DecodeConfig) -> dict:
    """The parameters that define a trace (recorded in provenance; resuming requires them to match)."""
    opts = ro.options
    return {
        "options": list(opts.labels) if isinstance(opts, OptionSet) else f"topk:{opts.k}",
        "option_token_ids": [list(t) for t in opts.token_ids] if isinstance(opts, OptionSet) else None,
        "aggregate": getattr(opts, "aggregate", None), "norm": ro.norm, "beta": ro.beta,
        "max_new_tokens": decode.max_new_tokens, "loop_window": decode.loop_window,
        "loop_ratio": decode.loop_ratio, "extend_factor": decode.extend_factor,
    }


def trace_path(out_dir: Path | str, id: str) -> Path:
    """File of one example's trace: `<out_dir>/<id>.safetensors` (unsafe characters replaced)."""
    return Path(out_dir) / (re.sub(r"[^A-Za-z0-9._-]", "_", str(id)) + ".safetensors")


def save_trace(path: Path | str, tr: Trace, prov: dict) -> Path:
    """Write a trace's tensors (safetensors) with its provenance and generation record in the metadata."""
    rec = {"id": tr.id, "text": tr.text, "answer": tr.answer, "stop_reason": tr.stop_reason,
           "labels": list(tr.labels), **tr.meta}
    tensors = {"logits": tr.logits, "entropy": tr.entropy, "tokens": torch.tensor(tr.tokens, dtype=torch.long),
               "option_ids": tr.option_ids, "final_logits": tr.final_logits}
    return write_tensors(path, tensors, {**prov, "trace": rec})


def load_trace(path: Path | str, expect_model: dict | None = None) -> Trace:
    """Read one trace written by `save_trace`; refuses a trace made with another model when `expect_model`."""
    t, prov = read_tensors(path, expect_model=expect_model)
    rec = dict(prov.get("trace", {}))
    meta = {k: v for k, v in rec.items() if k not in ("id", "text", "answer", "stop_reason", "labels")}
    meta["provenance"] = prov
    return Trace(id=rec.get("id", Path(path).stem), logits=t["logits"], entropy=t["entropy"],
                 tokens=t["tokens"].tolist(), text=rec.get("text", ""), answer=rec.get("answer"),
                 stop_reason=rec.get("stop_reason", ""), labels=tuple(rec.get("labels", ())),
                 option_ids=t["option_ids"], final_logits=t["final_logits"], meta=meta)


def _check_resumable(path: Path, lm, params: dict) -> bool:
    """True if an existing trace file was made by this model with these parameters; raise if it conflicts."""
    if not path.exists():
        return False
    _, prov = read_tensors(path, expect_model=lm.identity())  # ProvenanceError on another model
    old = prov.get("params", {})
    diff = sorted(k for k in params if old.get(k) != params[k])
    if diff:
        raise ProvenanceError(f"{path} was traced with other parameters ({', '.join(diff)}: "
                              f"{[old.get(k) for k in diff]} vs {[params[k] for k in diff]}); use a fresh "
                              "trace directory")
    return True


def trace_many(lm, prompts: Sequence[str], ids: Sequence[str], out_dir: Path | str, options: Any = "A-D",
               norm: str = "raw", beta: float = 1.0, decode: DecodeConfig | None = None, dataset: str | None = None,
               progress: bool = False, **option_kw) -> list[Path]:
    """Trace every prompt and save each example as soon as it is done (resumable: existing traces are skipped).

    Also writes `<out_dir>/index.json` (the probe IDs in order, with provenance). Returns the trace paths.
    """
    from tqdm.auto import tqdm

    prompts, ids = list(prompts), [str(i) for i in ids]
    if not prompts:
        raise ValueError("empty probe set: give at least one prompt to trace")
    if len(prompts) != len(ids):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("example ids must be unique (they name the trace files)")
    out_dir = Path(out_dir)
    cfg = decode or DecodeConfig()
    ro = build_readout(lm, options, norm, beta, **option_kw)
    params = trace_params(ro, cfg)
    paths = []
    for prompt, i in tqdm(list(zip(prompts, ids)), desc="tracing", disable=not progress):
        path = trace_path(out_dir, i)
        if not _check_resumable(path, lm, params):
            tr = trace(lm, prompt, readout=ro, decode=cfg, id=i)
            save_trace(path, tr, provenance(lm.identity(), dataset, [i], params))
        paths.append(path)
    write_json(out_dir / "index.json", {"ids": ids, "files": [p.name for p in paths]},
               provenance(lm.identity(), dataset, ids, params))
    return paths


def load_traces(out_dir: Path | str, ids: Sequence[str] | None = None,
                expect_model: dict | None = None) -> list[Trace]:
    """Load traces from a trace directory, in the order of `ids` (default: the order in `index.json`)."""
    out_dir = Path(out_dir)
    if ids is None:
        ids = read_json(out_dir / "index.json", expect_model=expect_model)["ids"]
    return [load_trace(trace_path(out_dir, i), expect_model) for i in ids]


# ----------------------------------------------------------------------------------------------- probe sets
TOY_OPTIONS = {"toy_mc4": "A-D", "toy_mc5": "A-E", "toy_countdown": "digits+ops", "toy_mc4_lb": "A-D"}


@dataclass
class ProbeSet:
    """Prompts to trace, with their ids, the option set to read out, and the gold answers."""

    task: str
    ids: list[str]
    prompts: list[str]
    options: str | tuple[str, ...]
    answers: list[str]
    skipped: int = 0  # malformed dataset rows skipped under support.tasks' policy (shown by chapter 01)
    items: list = field(default_factory=list)  # the records themselves, for `support.scoring.score`


def probe_set(task: str, n: int, seed: int = 0, template: str = "chatml", tokenizer=None,
              split: str | None = None) -> ProbeSet:
    """A probe set of `n` examples (Sec. 3.3, D_probe).

    Toy tasks come from `support.toydata.generate` (held-out split, seed 1000 + seed so the probe is not the first
    evaluation items); real multiple-choice tasks from `support.tasks.load_task` (the dev split where one exists),
    restricted to the most common option count (so |K| is fixed), sampled with `seed` and formatted with the
    App. B prompt in `template`.
    """
    import random

    if n < 1:
        raise ValueError(f"empty probe set: n must be >= 1, got {n}")
    if task in TOY_OPTIONS:
        from .toydata import generate

        items = generate(task, n, split or "test", seed=1000 + seed)
        return ProbeSet(task, [it.id for it in items], [it.prompt for it in items], TOY_OPTIONS[task],
                        [it.answer for it in items], items=items)
    from .prompts import format_mc_prompt
    from .tasks import MCItem, load_task

    try:
        res = load_task(task, split=split or "dev")
    except (ValueError, FileNotFoundError):
        res = load_task(task, split=split)
    items = [it for it in res.items if isinstance(it, MCItem)]
    if not items:
        raise ValueError(f"task {task!r} has no multiple-choice items; tracing needs an option set")
    from collections import Counter

    k = Counter(len(it.options) for it in items).most_common(1)[0][0]  # one option count per probe set (|K| fixed)
    items = [it for it in items if len(it.options) == k]
    items = random.Random(seed).sample(items, min(n, len(items)))
    letters = tuple("ABCDEFGHIJ"[:k])
    return ProbeSet(task, [it.id for it in items],
                    [format_mc_prompt(it.question, it.options, template, tokenizer) for it in items],
                    letters, [it.answer for it in items], skipped=len(res.skipped), items=items)


def trace_dir(run_dir: Path | str, task: str, norm: str = "raw") -> Path:
    """Where chapter 01 writes (and chapter 02 reads) a task's traces: `<run_dir>/traces/<task>/<norm>/`."""
    check_norm(norm)
    return Path(run_dir) / "traces" / task / norm


# ----------------------------------------------------------------------------------------------- per-head summaries
def top_option_persistence(logits: torch.Tensor) -> float:
    """Share of decoding steps whose top option is the head's most frequent top option ([T, |K|] logits of one head).

    1.0 for a head that backs one option throughout (steadfast-like), near 1/|K| for one with no persistent winner.
    """
    top = logits.argmax(-1)
    return float((top == top.mode().values).float().mean())


@torch.no_grad()
def head_output_norms(lm, prompt: str, tokens: Sequence[int]) -> np.ndarray:
    """[L, H] mean norm |o| of each head's output over the positions that predicted the generated `tokens`.

    One forward pass over prompt + generation through the bridge (`hook_result`, per query head).
    """
    ids = encode_prompt(lm, prompt)
    full = torch.cat([ids, torch.tensor([list(tokens)], device=ids.device)], 1)
    _, cache = lm.bridge.run_with_cache(full, names_filter=lambda n: n.endswith("attn.hook_result"))
    start = ids.shape[1] - 1
    return np.stack([cache[f"blocks.{l}.attn.hook_result"][0, start:-1].float().norm(dim=-1).mean(0).cpu().numpy()
                     for l in range(lm.n_layers)])


# ----------------------------------------------------------------------------------------------- memory
def footprint(config: Any, prompt_tokens: int, cap: int, dtype: Any = torch.float32, readout_bytes: int = 0) -> Any:
    """Estimated peak of tracing one prompt (`support.memory`): greedy decoding at batch 1 up to `prompt_tokens` +
    `cap` tokens, plus the trace's [cap, L, H, d_head] `hook_z` buffer and the readout's weights (`readout_bytes`)."""
    from .memory import BYTES, Shape, inference_footprint

    s = Shape.from_config(config)
    z = cap * s.n_layers * s.n_heads * s.d_head * BYTES.get(dtype, 4)
    return inference_footprint(s, 1, prompt_tokens + cap, dtype, kept=z + readout_bytes,
                               what=f"traced greedy decoding ({prompt_tokens} + {cap} tokens)")


def check_memory(config: Any, prompt_tokens: int, max_new_tokens: int, device: Any, dtype: Any = torch.float32,
                 readout_bytes: int = 0) -> Any:
    """Memory guard before tracing (Eq. 1-3 at every step of one greedy decode): returns the footprint, or raises
    `memory.MemoryBudgetError` naming the `max_new_tokens` that fits."""
    from .memory import guard

    return guard(lambda n: footprint(config, prompt_tokens, n, dtype, readout_bytes), "max_new_tokens",
                 max_new_tokens, device)
