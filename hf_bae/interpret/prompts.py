"""Prompts of the ComSem explainer and judge, with few-shot examples written for hf_bae.

The protocol follows Cho et al. (ComSem): the explainer sees tokens, their positions and their
contexts (never activation values) and names the most specific category they share; the judge
sees one token in context and a candidate description and answers Yes or No. The sample line
format (`Token: "…" at position N in sentence: "…"`) is the original's, so scores stay comparable;
the instructions and every example below are our own.

Events (`hf_bae.interpret.atlas_scoring`): a feature's samples show its event, "on" (tokens where it
fires: SAE latents, usually-off BAE codes) or "off" (a usually-on BAE code: tokens where it switches
off). For "on" the prompts are the protocol's, unchanged. For "off" both prompts say so in the final
message (`EVENT_NOTES`), so that neither model reads the named token as where the feature fires.
"""

from __future__ import annotations

import json

EXPLAIN_SYSTEM = "You find what a set of tokens has in common and name it in a few words."
JUDGE_SYSTEM = "You check whether a short description fits a token in its context. You answer only Yes or No."

EXPLAIN_INSTRUCTIONS = """\
Each line of a message shows one token, its position in its sentence (counted in model tokens, so it is approximate) \
and the sentence it occurs in. Find the property that these tokens share in their contexts and name it as \
specifically as the examples allow, for instance "modal verbs of obligation", "surnames of politicians" or \
"closing parentheses".
Rules:
- Be specific, but the description must fit every token.
- Do not answer with vague categories such as "words", "tokens", "common English words", "text" or "phrases".
- Do not describe the tokenizer (no "subword pieces", "BPE tokens" or "byte tokens").
- Reply with the description only: one short phrase, no explanation, no quotes.
"""

# (samples, answer) — samples are (token, position, sentence).
EXPLAIN_EXAMPLES: list[tuple[list[tuple[str, int, str]], str]] = [
    (
        [
            ("must", 3, "Every visitor must sign the register at the gate."),
            ("should", 2, "You should call your mother more often."),
            ("ought", 4, "The committee ought to publish its findings."),
            ("must", 5, "Before the vote, members must declare any interest."),
            ("should", 3, "Drivers should slow down near the school."),
        ],
        "modal verbs expressing obligation",
    ),
    (
        [
            ("kilometres", 4, "The trail climbs for twelve kilometres through pine forest."),
            ("pounds", 3, "It weighed forty pounds when it arrived."),
            ("litres", 5, "Each tank holds about two hundred litres of water."),
            ("inches", 4, "Snowfall reached nine inches overnight."),
            ("miles", 6, "The nearest hospital was thirty miles away."),
        ],
        "units of measurement after a number",
    ),
    (
        [
            ("not", 3, "She did not answer the letter."),
            ("never", 2, "We never travelled abroad as children."),
            ("n't", 3, "They couldn't find the key anywhere."),
            ("no", 4, "There was no reason to wait."),
            ("nothing", 2, "He said nothing about the accident."),
        ],
        "negation words",
    ),
    (
        [
            ("Congress", 5, "I ask the Congress to act on this bill before summer."),
            ("Senate", 3, "The Senate ratified the treaty in March."),
            ("legislature", 7, "The governor returned the budget to the legislature."),
            ("House", 2, "The House adjourned without a vote."),
            ("Parliament", 4, "Members of Parliament debated the measure all night."),
        ],
        "legislative bodies",
    ),
    (
        [
            ("taller", 3, "Her brother is taller than her father."),
            ("cheaper", 4, "The train was cheaper than the bus."),
            ("harder", 2, "It got harder every winter."),
            ("more", 5, "The second edition was more accurate."),
            ("better", 3, "Things will be better next year."),
        ],
        "comparative adjectives",
    ),
    (
        [
            (")", 9, "The plant (a rare orchid) grows only in shade."),
            (")", 12, "Results are shown in the appendix (see Table 3)."),
            (")", 7, "Three cities (Lyon, Nice, Lille) voted against."),
            (")", 10, "He paid the fee (twenty dollars) in cash."),
            (")", 6, "The device (model B) failed twice."),
        ],
        "closing parentheses ending an aside",
    ),
    (
        [
            ("1848", 3, "Revolutions swept Europe in 1848."),
            ("1929", 5, "The crash of October 1929 ruined many families."),
            ("1776", 2, "In 1776 the colonies declared independence."),
            ("1965", 6, "The law was finally amended in 1965."),
            ("1812", 4, "The war of 1812 ended in stalemate."),
        ],
        "years in historical dates",
    ),
    (
        [
            ("whispered", 2, "She whispered the answer to her friend."),
            ("shouted", 3, "The captain shouted orders across the deck."),
            ("replied", 4, "After a pause, he replied politely."),
            ("murmured", 2, "Someone murmured a prayer."),
            ("announced", 3, "The minister announced new taxes."),
        ],
        "verbs of speaking",
    ),
]

JUDGE_INSTRUCTIONS = """\
Each message shows one token, its approximate position (in model tokens) and the sentence it occurs in, \
followed by a candidate description. Answer "Yes" if the description fits this token in this context, and "No" if it does not.
Reply with exactly one word: Yes or No.
"""

# (token, position, sentence, description, answer)
JUDGE_EXAMPLES: list[tuple[str, int, str, str, str]] = [
    ("must", 3, "All passengers must show a ticket.", "modal verbs expressing obligation", "Yes"),
    ("can", 2, "Birds can see ultraviolet light.", "modal verbs expressing obligation", "No"),
    ("kilometres", 3, "We walked five kilometres before lunch.", "units of measurement after a number", "Yes"),
    ("years", 4, "It happened many years ago.", "units of measurement after a number", "No"),
    ("never", 2, "I never liked winter.", "negation words", "Yes"),
    ("now", 2, "We now turn to the budget.", "negation words", "No"),
    ("Senate", 2, "The Senate rejected the nomination.", "legislative bodies", "Yes"),
    ("senator", 2, "The senator rejected the nomination.", "legislative bodies", "No"),
    ("faster", 3, "The new engine runs faster.", "comparative adjectives", "Yes"),
    ("fast", 3, "The new engine runs fast.", "comparative adjectives", "No"),
    (")", 8, "The lake (frozen until May) is popular.", "closing parentheses ending an aside", "Yes"),
    ("(", 3, "The lake (frozen until May) is popular.", "closing parentheses ending an aside", "No"),
    ("1918", 4, "The armistice was signed in 1918.", "years in historical dates", "Yes"),
    ("1918", 4, "Call the office at extension 1918.", "years in historical dates", "No"),
    ("shouted", 2, "He shouted for help.", "verbs of speaking", "Yes"),
    ("walked", 2, "He walked for help.", "verbs of speaking", "No"),
]


EVENTS = ("on", "off")

# What the final message adds for each event (nothing for "on": the protocol as published).
EVENT_NOTES = {
    "on": "",
    "off": ("These tokens are where a feature switches OFF: it is on almost everywhere else, and the token named on "
            "each line is where it is off. Name what these tokens share."),
}
JUDGE_EVENT_NOTES = {
    "on": "",
    "off": ("The description names the tokens where a feature switches OFF (it is on almost everywhere else). "
            "Answer whether it fits this token."),
}


def _event_note(notes: dict[str, str], event: str | None) -> str:
    event = event or "on"  # atlases written before events were recorded: their samples are where features fire
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS} or None, got {event!r}.")
    return notes[event]


def display_token(token: str) -> str:
    """A token as shown in prompts: surrounding whitespace removed, whitespace-only tokens escaped ("\\n")."""
    stripped = token.strip()
    if stripped:
        return stripped
    return json.dumps(token)[1:-1] or "(empty)"


def sample_line(token: str, position: int, context: str) -> str:
    """One sample in the protocol's format. Newlines in the context become spaces (one sample per line)."""
    context = " ".join(context.split())
    return f'Token: "{display_token(token)}" at position {position} in sentence: "{context}"'


def explain_prompt(samples: list[tuple[str, int, str]], event: str | None = "on") -> list[dict[str, str]]:
    """Chat messages asking for the commonality of `samples` ((token, position, context) triples), which
    show the feature's `event` ("on": it fires there; "off": it switches off there, said in the message).

    The few-shot examples are earlier turns of the chat (user: samples, assistant: answer). Small local
    chat models follow this far better than one long message: SmolLM2-135M-Instruct echoed the prompt
    when the examples were inlined, and answered with a phrase when they were turns.
    """
    messages = [{"role": "system", "content": f"{EXPLAIN_SYSTEM}\n{EXPLAIN_INSTRUCTIONS}"}]
    for example, answer in EXPLAIN_EXAMPLES:
        messages.append({"role": "user", "content": "\n".join(sample_line(*s) for s in example)})
        messages.append({"role": "assistant", "content": answer})
    note = _event_note(EVENT_NOTES, event)
    lines = ([note] if note else []) + [sample_line(*s) for s in samples]
    messages.append({"role": "user", "content": "\n".join(lines)})
    return messages


def judge_query(sample: tuple[str, int, str], description: str, event: str | None = "on") -> str:
    note = _event_note(JUDGE_EVENT_NOTES, event)
    return (f"{note}\n" if note else "") + f'{sample_line(*sample)}\nDescription: "{description}"'


def judge_prompt(sample: tuple[str, int, str], description: str, event: str | None = "on") -> list[dict[str, str]]:
    """Chat messages asking whether `description` fits `sample` ((token, position, context)); few-shot as turns.
    For an "off" feature the final message says that the description names where the feature switches off."""
    messages = [{"role": "system", "content": f"{JUDGE_SYSTEM}\n{JUDGE_INSTRUCTIONS}"}]
    for token, position, sentence, desc, answer in JUDGE_EXAMPLES:
        messages.append({"role": "user", "content": judge_query((token, position, sentence), desc)})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": judge_query(sample, description, event)})
    return messages
