"""Prompt formatting (paper 000, Appendix B); answers are parsed and scored by `support.scoring`.

The unified instruction content is identical for every model; only the chat template (control tokens) differs:
the LLaMA-2 `[INST] <<SYS>>` template, ChatML (Qwen), or the model's own chat template where it has one.
"""

from __future__ import annotations

from typing import Sequence

LETTERS = "ABCDEFGHIJ"

#: App. B.1 system message, verbatim.
UNIFIED_SYSTEM = (
    "You are a helpful reasoning assistant. You must perform explicit step-by-step reasoning before giving the "
    "final answer."
)
#: App. B.1 user-message suffix, verbatim.
UNIFIED_INSTRUCTION = (
    "Please think step by step (chain of thought) to solve this single choice question. After reasoning, output on "
    "the last line exactly in the format: Answer: <OPTION_LETTER>."
)

TEMPLATES = ("chatml", "llama2", "model", "plain", "organism")


def option_lines(options: Sequence[str], layout: str = "app_b", letters: str = LETTERS) -> list[str]:
    """One line per option: `X. option` (App. B), `option (X)` (the organism's own layout, letter after value) or
    `(X) option` (`letter_first`: the shifted layout the organism fine-tunes on in chapter 04).

    A small model learns the retrieval "copy what followed the matching value" (the canonical induction pattern)
    far faster than "copy what preceded it", so the organism's options put the letter after the value (measured
    while building it; see data/organism/toy-qwen2/MODEL_CARD.md)."""
    if len(options) > len(letters):
        raise ValueError(f"{len(options)} options but only {len(letters)} letters available")
    if layout == "app_b":
        return [f"{letters[i]}. {opt}" for i, opt in enumerate(options)]
    if layout == "organism":
        return [f"{opt} ({letters[i]})" for i, opt in enumerate(options)]
    if layout == "letter_first":
        return [f"({letters[i]}) {opt}" for i, opt in enumerate(options)]
    raise ValueError(f"unknown option layout {layout!r}; valid choices: app_b, organism, letter_first")


def question_block(question: str, options: Sequence[str], letters: str = LETTERS) -> str:
    """Question stem followed by one `X. option` line per option."""
    return "\n".join([question.strip()] + option_lines(options, "app_b", letters))


def organism_block(question: str, options: Sequence[str], letters: str = LETTERS, layout: str = "organism") -> str:
    """Question stem followed by one `option (X)` line per option: the organism's layout (see `option_lines`)."""
    return "\n".join([question.strip()] + option_lines(options, layout, letters))


def user_message(question: str, options: Sequence[str]) -> str:
    """App. B.1 user message: question stem + options, then the unified instruction."""
    return question_block(question, options) + "\n" + UNIFIED_INSTRUCTION


def user_turn(user: str) -> str:
    """A bare ChatML user turn: the toy organism's training format (no system preamble, no instruction)."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def wrap(system: str, user: str, template: str = "chatml", tokenizer=None, think: bool | None = None) -> str:
    """Wrap system and user content in a chat template (App. B.2). `model` uses the tokenizer's own template;
    `think` (True/False) sets its `enable_thinking` switch (Qwen3's think on/off), which only such templates have."""
    if think is not None and (template != "model" or "enable_thinking" not in str(getattr(tokenizer, "chat_template",
                                                                                          None) or "")):
        raise ValueError(f"think={think!r} needs template 'model' and a chat template with an enable_thinking switch "
                         f"(Qwen3); got template {template!r}")
    if template == "chatml":
        return (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        )
    if template == "llama2":
        return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
    if template == "plain":
        return f"{system}\n\n{user}\n\n"
    if template == "model":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'model' needs a tokenizer with a chat_template; use 'chatml' or 'llama2'")
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        kw = {} if think is None else {"enable_thinking": think}
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
    raise ValueError(f"unknown template {template!r}; valid choices: {', '.join(TEMPLATES)}")


def format_mc_prompt(question: str, options: Sequence[str], template: str = "chatml", tokenizer=None) -> str:
    """The full App. B prompt for one multiple-choice item (`organism`: the toy's bare question-and-options turn)."""
    if template == "organism":
        return user_turn(organism_block(question, options))
    return wrap(UNIFIED_SYSTEM, user_message(question, options), template, tokenizer)


#: Paper 003 App. A.1's system instruction for free-form reasoning (GSM8K, MATH-style sets).
REASONING_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
#: Countdown (Pan et al. 2025, as paper 003 trains it): four numbers, a target, an `Answer:` line the verifier reads.
COUNTDOWN_USER = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic operations "
    "(+, -, *, /) and each number can only be used once. Show your work step by step, then give the final equation "
    "on the last line exactly in the format: Answer: <EXPRESSION>."
)


def format_reasoning_prompt(item, template: str = "chatml", tokenizer=None) -> str:
    """The prompt for a free-form reasoning item: a Countdown item (numbers and target) or a math item (question),
    under paper 003's system instruction. Multiple-choice items use `format_mc_prompt`."""
    if getattr(item, "numbers", None) and getattr(item, "target", None) is not None:
        user = COUNTDOWN_USER.format(numbers=", ".join(str(n) for n in item.numbers), target=item.target)
        system = "You are a helpful assistant. You first think about the reasoning process and then answer."
    elif getattr(item, "problem", None) or getattr(item, "question", None):
        user, system = (getattr(item, "problem", None) or item.question).strip(), REASONING_SYSTEM
    else:
        raise ValueError(f"cannot build a reasoning prompt for {type(item).__name__}: it has neither numbers/target "
                         "nor a problem")
    if template == "organism":
        return user_turn(user)
    return wrap(system, user, template, tokenizer)
