"""IKE's prompt text, as pure strings: the new fact, demonstrations and the prefix of the scored prompt.

    New Fact: {fact prompt} {fact target}\\nPrompt: {prompt} {answer}\\n\\n     (one per demonstration)
    New Fact: {fact prompt} {fact target}\\nPrompt: {the scored prompt}

The IKE baseline writes its contexts with these functions and the world's pretraining corpus teaches the
embedded model to read them, so both must agree to the character (no torch import here on purpose: the
world generator uses it).
"""

from __future__ import annotations


def fact_line(prompt: str, target: str) -> str:
    return f"New Fact: {prompt} {target}\n"


def demonstration(fact_prompt: str, fact_target: str, prompt: str, answer: str) -> str:
    """One worked example: a fact, then a prompt answered in its light (copy, update or retain)."""
    return fact_line(fact_prompt, fact_target) + f"Prompt: {prompt} {answer}\n\n"


def query_prefix(fact_prompt: str, fact_target: str) -> str:
    """What precedes the scored prompt: the new fact and the start of its prompt line."""
    return fact_line(fact_prompt, fact_target) + "Prompt: "
