"""One process of a 2-process attention-credit GRPO run (`tests/test_distributed_rl.py` launches it).

    accelerate launch --cpu --num_processes 2 tests/dist/grpo_worker.py OUT_DIR

Runs `support.rl.train_grpo` (the chapter's entry point) on the organism with coupled credit for 2 steps and writes
``OUT_DIR/rank<r>.pt``: per step, this process's prompt and completion tensors, the gathered rewards, the rewards
and texts its reward function scored, the 1-D advantages the parent handed it, the (B, T) shaped advantages, and
the policy weights the credit pass used. Two things are swapped in for the record, both through the module:
`rl.CreditGRPOTrainer` by a subclass that records around `shape_batch`, and `rl.reward_function` by a reward that
varies inside every group (the organism's Countdown reward at 32 tokens is almost always 0, which would make every
advantage 0 and the comparison empty).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from support import rl
from support.tasks import load_task

torch.set_num_threads(1)

#: Sizes (TRL 1.16): per_device_train_batch_size 6 on 2 processes makes generation_batch_size 12 = 3 prompts x 4
#: generations, so prompt 1's group straddles the two processes (rank 0: p0 x4, p1 x2; rank 1: p1 x2, p2 x4) and
#: group normalisation must use the gathered rewards.
STEPS, GENERATIONS, PER_DEVICE, MAX_LEN, TEMPERATURE = 2, 4, 6, 48, 1.5
CREDIT = rl.CreditConfig(strategy="coupled", window=4, h_lo=2, h_hi=16, n_layers=5)
RECORDS: list[dict] = []
SCORED: list[tuple[list[str], list[float]]] = []


def varied_reward(prompts, completions, **columns):
    """A deterministic reward of the completion text that differs between completions (scored on this process)."""
    texts = [rl.completion_text(c) for c in completions]
    out = [int(hashlib.sha256(t.encode()).hexdigest(), 16) % 10 / 10 for t in texts]
    SCORED.append((texts, out))
    return out


class RecordingTrainer(rl.CreditGRPOTrainer):
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._gathered = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._gathered

    def shape_batch(self, batch):
        cpu = lambda t: t.detach().cpu().clone()  # noqa: E731
        model = self.accelerator.unwrap_model(self.model)
        rec = {"step": self.state.global_step, "rank": self.accelerator.process_index,
               "world": self.accelerator.num_processes, "credit_seed": self._credit_generator.initial_seed(),
               **{k: cpu(batch[k]) for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")},
               "advantages": cpu(batch["advantages"]), "gathered_rewards": cpu(self._gathered),
               "scored_texts": SCORED[-1][0], "scored_rewards": SCORED[-1][1],
               "state_dict": {k: cpu(v) for k, v in model.state_dict().items()}}
        out = super().shape_batch(batch)
        rec["shaped"] = cpu(out["advantages"])
        RECORDS.append(rec)
        return out


def main(out_dir: str) -> None:
    out = Path(out_dir)
    rl.CreditGRPOTrainer = RecordingTrainer
    rl.reward_function = lambda family: varied_reward
    train = load_task("toy_countdown", "train", 12).items
    held_out = load_task("toy_countdown", "test", 2).items
    run = rl.train_grpo("toy-qwen2", train, held_out, out / "run", credit=CREDIT, steps=STEPS,
                        prompts_per_step=1, num_generations=GENERATIONS,  # per-device size below
                        per_device_train_batch_size=PER_DEVICE, max_completion_length=MAX_LEN, temperature=TEMPERATURE,
                        gradient_checkpointing=False, eval_every=100, eval_at_start=False, seed=0)
    rank = RECORDS[0]["rank"] if RECORDS else -1
    torch.save({"records": RECORDS, "history": run.history, "credit": CREDIT.__dict__}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
