"""support.toydata: the organism's tasks, in both think modes, with long structured chains of thought."""

from __future__ import annotations

import itertools

import pytest

from support import scoring, toydata
from support.toydata import generate


def test_modes_ask_the_same_questions():
    on, off = generate("toy_mc4", 20, "test", mode="think"), generate("toy_mc4", 20, "test", mode="no_think")
    assert [i.id for i in on] == [i.id for i in off] and [i.question for i in on] == [i.question for i in off]
    assert all(i.prompt.endswith("/think<|im_end|>\n<|im_start|>assistant\n") for i in on)
    assert all(i.prompt.endswith("/no_think<|im_end|>\n<|im_start|>assistant\n") for i in off)
    assert all(i.response.startswith("<think>\n</think>\nAnswer: ") for i in off)
    assert all(i.response.startswith("<think>\n") and "\n</think>\nAnswer: " in i.response for i in on)


def test_unknown_mode_task_or_split_fails_naming_the_choices():
    with pytest.raises(ValueError, match="valid choices: think, no_think"):
        generate("toy_mc4", 1, mode="thinking")
    with pytest.raises(ValueError, match="valid choices: toy_mc4, toy_mc5, toy_countdown"):
        generate("toy_mc6", 1)
    with pytest.raises(ValueError, match="valid choices: train, test"):
        generate("toy_mc4", 1, "dev")


def test_train_and_test_never_share_a_question():
    for task in toydata.TOY_TASKS:
        train = {i.id for i in generate(task, 300, "train")}
        assert not train & {i.id for i in generate(task, 100, "test")}
    mix = {i.id for i in itertools.islice(toydata.mixture(0, think_share=0.5), 2000)}
    assert not mix & {i.id for t in toydata.TOY_TASKS for i in generate(t, 100, "test")}


def test_mc_steps_are_worked_by_tens_and_units():
    assert toydata.step_line(23, "+", 45) == ("23 + 45 = 23 + 40 + 5 = 63 + 5 = 68", 68)
    assert toydata.step_line(63, "-", 27) == ("63 - 27 = 63 - 20 - 7 = 43 - 7 = 36", 36)
    for it in generate("toy_mc5", 50, "test"):
        lines = it.rationale.splitlines()
        gold = it.options["ABCDE".index(it.answer)]
        hit = "ABCDE".index(it.answer)
        steps, scan = lines[1:-hit - 1], lines[-hit - 1:]
        assert lines[0] == f"Compute {it.question[len('What is '):-2]} ." and len(steps) in (4, 5)
        assert all(ln.count("=") == 3 for ln in steps)  # every step worked by tens and units
        assert steps[-1].endswith(f"= {gold}")
        # the options checked in order, stopping at the hit, whose letter is the last one written
        assert scan == [f"{o} ({L}) is not {gold} ." for o, L in zip(it.options[:hit], "ABCDE")] + [
            f"{gold} ({it.answer}) is {gold} ."]


def test_scan_refuses_a_result_outside_the_options():
    assert toydata.scan_lines([8, 28], 28) == ["8 (A) is not 28 .", "28 (B) is 28 ."]
    with pytest.raises(ValueError, match="not among the options"):
        toydata.scan_lines([8, 38], 28)


def test_arithmetic_facts_are_right_and_in_range():
    import random

    for s in range(50):
        it = toydata.arith_item(random.Random(s))
        facts = it.rationale.splitlines()
        assert len(facts) == toydata.ARITH_FACTS and it.question == "Compute " + " , ".join(
            f.split(" = ")[0] for f in facts) + " ."
        for f in facts:
            a, op, b, _, r = f.split()
            assert eval(f"{a} {op} {b}") == int(r) and 0 <= int(r) <= toydata.MAX_VALUE  # noqa: S307 (our own digits)


def test_countdown_search_stops_at_the_first_hit():
    order = list(itertools.product(toydata.CD_OPS, repeat=3))
    for it in generate("toy_countdown", 100, "test"):
        lines = it.rationale.splitlines()
        nums = tuple(int(x) for x in lines[0].split()[2:6])
        assert nums == tuple(sorted(it.numbers, reverse=True)) and lines[0].endswith(f"to {it.target} .")
        tries = lines[1:]
        assert 1 <= len(tries) <= toydata.CD_MAX_PROPOSALS
        assert all(t.endswith(f"is not {it.target} .") for t in tries[:-1])
        assert tries[-1].endswith(f"{it.target} is {it.target} .")
        for text, ops in zip(tries, order):  # the proposals follow the fixed operator order
            assert text.startswith(toydata.proposal(nums, ops)[0])
        assert scoring.verify_countdown(it.answer, it.numbers, it.target)


def test_think_on_responses_are_long(toy):
    tok = toy.tokenizer
    for task in toydata.TOY_TASKS:
        items = generate(task, 100, "test")
        n = [len(tok(i.response, add_special_tokens=False).input_ids) for i in items]
        assert sum(n) / len(n) >= 80, (task, sum(n) / len(n))
        assert tok.unk_token_id not in tok(items[0].text).input_ids


def test_model_card_verdicts_are_computed_from_the_measurements():
    from support.organism import status

    rows = [{"task": t, "mode": m, "n": 10, "accuracy": a, "mean_tokens": n}
            for t, m, a, n in [("toy_mc4", "think", 0.7, 95.0), ("toy_mc4", "no_think", 0.3, 7.0),
                               ("toy_countdown", "think", 0.95, 100.0), ("toy_countdown", "no_think", 0.2, 17.0)]]
    text = "\n".join(status({"heldout": rows}))
    assert "0.700, inside the 0.5–0.9" in text and "clearly lower" in text and "NOT" not in text.split("\n")[1]
    assert "0.950, OUTSIDE the 0.3–0.7" in text and "97.5 tokens (≥ 80)" in text
    assert status({}) == []


@pytest.mark.slow
def test_organism_training_is_bit_for_bit_and_reuse_base_retrains_only_the_reasoning_stage(tmp_path):
    """`make organism`'s promise at smoke size: two runs of one recipe give identical weights, and `--reuse-base`
    (the reasoning stage alone, from the saved base) gives the same reasoning checkpoint as the full run."""
    import torch

    from support import organism

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    recipe = organism.Recipe(batch_size=4, reason_batch_size=2, curriculum_steps=3, base_steps=2, reason_steps=2,
                             eval_every=1000, eval_n=1)
    try:
        organism.train(tmp_path / "a", recipe)
        organism.train(tmp_path / "b", recipe)
        first = organism.weights_digest(tmp_path / "a")
        assert first == organism.weights_digest(tmp_path / "b")
        (tmp_path / "a" / organism.NAME / "model.safetensors").unlink()
        organism.train(tmp_path / "a", recipe, reuse_base=True)
        assert organism.weights_digest(tmp_path / "a") == first
        with pytest.raises(ValueError, match="think_share"):
            organism.Recipe(think_share=1.5)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def test_the_fine_tuning_task_writes_letters_first_and_is_held_out_of_pretraining():
    assert "toy_mc4_lb" not in toydata.MIX and "toy_mc4_lb" not in toydata.TOY_TASKS
    with pytest.raises(ValueError, match="valid choices: .*toy_mc4_lb"):
        generate("toy_mc4_b", 1)
    items = generate("toy_mc4_lb", 40, "test")
    assert not {i.id for i in items} & {i.id for i in generate("toy_mc4_lb", 200, "train")}
    for it in items:
        lines = it.user.splitlines()
        assert lines[1:] == [f"({L}) {o}" for L, o in zip("ABCD", it.options)]  # letter before value
        hit = "ABCD".index(it.answer)
        gold = it.options[hit]
        checks = [f"({L}) {o} is not {gold} ." for L, o in zip("ABCD", it.options[:hit])]
        assert it.rationale.splitlines()[-hit - 1:] == checks + [f"({it.answer}) {gold} is {gold} ."]
        assert scoring.score(it, it.response).reward == 1.0  # the gold response scores as correct
