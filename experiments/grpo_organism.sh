#!/usr/bin/env bash
# Chapter 05's longer plain-GRPO runs on the organism (the `ci` run is 12 steps on one fixed batch of 8 prompts): does
# plain GRPO lift held-out Countdown accuracy with fresh prompts and more steps, or with the usual fixes, and what do
# longer fixed-pool runs learn (--train-eval: accuracy on the prompts trained on, beside held-out)? Each run is
# `python -m support.rl` (run.json holds the reward log, the accuracy curves and the provenance); two runs share the
# 2 cores, one thread each (~5-8 min a pair).
# The chapter plots data/grpo_diagnosis/*/run.json beside its own runs.
#   bash experiments/grpo_organism.sh [OUT]        (default OUT: data/grpo_diagnosis)
set -euo pipefail
OUT=${1:-data/grpo_diagnosis}
PY=${PYTHON:-.venv/bin/python}
common=(--model toy-qwen2 --task toy_countdown --template organism --strategy none --prompts-per-step 8
        --num-generations 8 --max-new-tokens 200 --lr 1e-4 --n-train 2048 --n-eval 96 --eval-samples 2
        --save-every 1000 --threads 1)
run() { tag=$1; shift; "$PY" -m support.rl "${common[@]}" --out "$OUT/$tag" "$@" > "$OUT/$tag.log" 2>&1; }
mkdir -p "$OUT"
run T1-seed0 --steps 60 --eval-every 15 --seed 0 & run T1-seed1 --steps 60 --eval-every 15 --seed 1 & wait
run T0.7-masktrunc-seed0 --steps 36 --eval-every 12 --seed 0 --temperature 0.7 --mask-truncated &
run T0.7-drgrpo-seed0 --steps 36 --eval-every 12 --seed 0 --temperature 0.7 --loss-type dr_grpo & wait
run pool8-seed0 --steps 36 --eval-every 12 --seed 0 --n-train 8 --train-eval 8 &
run pool64-seed0 --steps 36 --eval-every 12 --seed 0 --n-train 64 --train-eval 64 & wait
