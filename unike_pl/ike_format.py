"""IKE's text format: demonstrations, the new fact and the scored prompt, written in one place.

In-context editing (IKE, Zheng et al., EMNLP 2023; the benchmark code's multimodal IKE) writes, before every
scored input of an edit, k demonstrations, then the new fact as one more demonstration of itself, then the
new fact again as the prefix of the scored prompt:

    New Fact: {prompt} {target}\\nPrompt: {question} {answer}\\n\\n     (one per demonstration)
    New Fact: {edit prompt} {edit target}\\nPrompt: {edit prompt} {edit target}\\n\\n
    New Fact: {edit prompt} {edit target}\\nPrompt: {the scored prompt} {the scored answer}

A demonstration is one of three kinds, each built from a training record (src, alt, rephrase, loc,
loc_ans): *copy* asks the fact's own prompt, *update* asks its paraphrase (both answered with the new
target), *retain* asks an unrelated question answered with its own answer (the fact must leave it alone).

Kept free of heavy imports: the embedded world's pretraining corpus writes these same strings to teach its
model to read an IKE context, and the in-context editor (`unike_pl.editing.context`) writes them to edit.
"""

from __future__ import annotations

from collections.abc import Sequence

DEMONSTRATION_KINDS = ("copy", "update", "retain")


def new_fact_line(prompt: str, target: str) -> str:
    """The line that states a fact: `New Fact: {prompt} {target}` and a newline."""
    return f"New Fact: {prompt} {target}\n"


def demonstration(prompt: str, target: str, question: str, answer: str) -> str:
    """A fact, then a question answered under it, then a blank line."""
    return f"{new_fact_line(prompt, target)}Prompt: {question} {answer}\n\n"


def copy_demonstration(prompt: str, target: str) -> str:
    """The fact's own prompt answered with its target."""
    return demonstration(prompt, target, prompt, target)


def update_demonstration(prompt: str, target: str, rephrase: str) -> str:
    """A paraphrase of the fact's prompt answered with its target."""
    return demonstration(prompt, target, rephrase, target)


def retain_demonstration(prompt: str, target: str, question: str, answer: str) -> str:
    """An unrelated question answered with its own answer, the fact notwithstanding."""
    return demonstration(prompt, target, question, answer)


def prompt_prefix(prompt: str, target: str) -> str:
    """What stands right before a scored prompt: the new fact, then `Prompt: `."""
    return f"{new_fact_line(prompt, target)}Prompt: "


def new_fact_block(prompt: str, target: str) -> str:
    """What follows the demonstrations: the new fact as a copy demonstration of itself (the last one, next
    to the input), then the new fact again as the prompt prefix."""
    return copy_demonstration(prompt, target) + prompt_prefix(prompt, target)


def context_before_prompt(demonstrations: Sequence[str], prompt: str, target: str) -> str:
    """The whole text written before a scored prompt under the edit (prompt, target)."""
    return "".join(demonstrations) + new_fact_block(prompt, target)
