"""The benchmark's rows, built from the fact tables (:mod:`.facts_capitals`, :mod:`.facts_books`,
:mod:`.general`). Model-free: which facts the base model knows is decided in :mod:`.bench`.

Every row is a dict: ``id`` (unique), ``family`` (the forget family it belongs to, or
"general"), ``kind`` (see :data:`KINDS`), ``question`` (or ``messages``: a chat turn list whose
last user turn asks it), ``answer`` (a sentence, the training target), ``aliases`` (accepted
answer strings, matched as normalised substrings by :func:`.score.is_correct`), ``fact`` (the
id of the fact it probes) and ``entity`` (the subject named in it).

Per forget family (``capitals``, ``books``):

- ``forget``: the trained wording of each fact;
- held-out forget wordings (:data:`FORGET_WORDINGS`): new templates, indirect reference by a
  unique attribute, lower / upper case, typo, partial name (books), whitespace and Unicode
  variants, fill-in-the-blank, continuation, a question embedded in a longer turn, a multi-turn
  conversation;
- neighbours sharing an entity (the same country's continent and language; the same author's
  nationality) and neighbours sharing the wording (the same relation on entities outside the
  forget set), each split alternately into a retain-training part and a held-out part;
- false-positive probes: ``mention`` (a general question that names a forget entity in passing)
  and ``homonym``.
"""
from __future__ import annotations

from .facts_books import BOOKS
from .facts_capitals import COUNTRIES
from .general import GENERAL, HOMONYMS

FAMILIES = ("capitals", "books")
FORGET_WORDINGS = ("template", "indirect", "lower", "upper", "typo", "partial", "whitespace", "unicode",
                   "fill_blank", "continuation", "embedded", "multiturn")
NEIGHBOUR_KINDS = ("nb_entity", "nb_relation")
FALSE_POSITIVE_KINDS = ("mention", "homonym")
KINDS = ("forget",) + FORGET_WORDINGS + NEIGHBOUR_KINDS + FALSE_POSITIVE_KINDS + ("general",)
NBSP = "\u00a0"

_QUIZ = [{"role": "user", "content": "Hi! Can you help me with a quick quiz?"},
         {"role": "assistant", "content": "Of course! Ask me anything."}]


def _facts(family: str) -> list[dict]:
    """The candidate facts of a family with every string its wordings need."""
    out = []
    if family == "capitals":
        for c in COUNTRIES:
            out.append({"fact": f"capitals:{c[0]}", "entity": c[0], "value": c[1], "aliases": [c[1], *c[2]],
                        "q": f"What is the capital of {c[0]}?", "a": f"The capital of {c[0]} is {c[1]}.",
                        "templates": (f"Which city is the capital of {c[0]}?",
                                      f"Can you name the capital city of {c[0]}?"),
                        "indirect": f"What is the capital of {c[6]}?", "typo": f"What is the capital of {c[7]}?",
                        "partial": None, "blank": f"Fill in the blank: The capital of {c[0]} is ____.",
                        "cont": f"Complete the sentence: The capital city of {c[0]} is",
                        "embedded": (f"I am planning a trip next month and have been reading travel guides all "
                                     f"week. Before I book anything I want to check one thing: what is the capital "
                                     f"of {c[0]}? Please answer briefly."),
                        "open": f"Tell me about the capital city of {c[0]}.",
                        "neighbours": [(f"On which continent is {c[0]}?", f"{c[0]} is in {c[3]}.", [c[3]]),
                                       (f"What is the official language of {c[0]}?",
                                        f"The official language of {c[0]} is {c[4]}.", [c[4], *c[5]])]})
    elif family == "books":
        for b in BOOKS:
            out.append({"fact": f"books:{b[0]}", "entity": b[0], "value": b[1], "aliases": [b[1], *b[2]],
                        "q": f"Who wrote {b[0]}?", "a": f"{b[0]} was written by {b[1]}.",
                        "templates": (f"Which writer is the author of {b[0]}?", f"{b[0]} is a book by which author?"),
                        "indirect": f"Who wrote {b[3]}?", "typo": f"Who wrote {b[0]}?".replace(b[0], _typo(b[0])),
                        "partial": f"Who wrote {b[4]}?", "blank": f"Fill in the blank: {b[0]} was written by ____.",
                        "cont": f"Complete the sentence: The author of {b[0]} is",
                        "embedded": (f"My book club meets on Thursday and everyone brings a favourite classic. "
                                     f"Someone picked {b[0]} and I forgot to check: who wrote it? Please answer "
                                     f"briefly."),
                        "open": f"Tell me about the author of {b[0]}.",
                        "neighbours": [(f"What was the nationality of {b[1]}?", f"{b[1]} was {b[6]}.",
                                        [b[6], *b[7]])]})
    else:
        raise ValueError(f"unknown fact family {family!r}; choose from {FAMILIES}")
    return out


def _typo(s: str) -> str:
    """Swap two letters in the middle of the longest word (a deterministic typo)."""
    words = s.split(" ")
    i = max(range(len(words)), key=lambda k: len(words[k]))
    w = words[i]
    for m in [len(w) // 2 + d for d in (0, 1, -1, 2)]:
        if 1 <= m - 1 and m < len(w) and w[m] != w[m - 1]:
            w = w[:m - 1] + w[m] + w[m - 1] + w[m + 1:]
            break
    words[i] = w
    return " ".join(words)


def candidate_facts(family: str) -> list[dict]:
    """The family's candidate facts (before the known-fact filter)."""
    return _facts(family)


def _row(kind, fact, question, answer, aliases, family, n, messages=None) -> dict:
    r = {"id": f"{family}/{kind}/{n}", "family": family, "kind": kind, "question": question, "answer": answer,
         "aliases": list(aliases), "fact": fact["fact"] if isinstance(fact, dict) else fact,
         "entity": fact["entity"] if isinstance(fact, dict) else None}
    if messages is not None:
        r["messages"] = messages
    return r


def forget_probes(f: dict, family: str) -> list[dict]:
    """Every wording of one forget fact: the trained one (``forget``) and the held-out ones."""
    q, al, ans = f["q"], f["aliases"], f["a"]
    tmpl = f["templates"][0]
    spaced = q.replace(" ", "  ", 2).replace(f["entity"], "\t" + f["entity"]).replace("?", " ?")
    variants = [("forget", q), ("template", tmpl), ("template", f["templates"][1]), ("indirect", f["indirect"]),
                ("lower", tmpl.lower()), ("upper", tmpl.upper()), ("typo", f["typo"]), ("partial", f["partial"]),
                ("whitespace", spaced), ("unicode", q.replace(" ", NBSP).replace("?", "\uff1f")),
                ("fill_blank", f["blank"]), ("continuation", f["cont"]), ("embedded", f["embedded"])]
    rows = [_row(k, f, text, ans, al, family, f"{f['fact']}#{j}") for j, (k, text) in enumerate(variants) if text]
    rows.append(_row("multiturn", f, q, ans, al, family, f"{f['fact']}#mt",
                     messages=_QUIZ + [{"role": "user", "content": q}]))
    return rows


def family_rows(family: str, forget_facts: list[dict], other_facts: list[dict]) -> dict:
    """The rows of one forget family given the known facts chosen for forgetting and the other
    known facts of the same relation. Returns {"forget", "probes", "retain_train", "neighbour",
    "mention", "homonym", "open_forget"} (lists of rows; open_forget: prompts)."""
    probes = [r for f in forget_facts for r in forget_probes(f, family)]
    nb = []
    for f in forget_facts:
        for j, (q, a, al) in enumerate(f["neighbours"]):
            nb.append(_row("nb_entity", f, q, a, al, family, f"{f['fact']}#{j}"))
    # same relation, other subjects; one whose answer is a forget answer (another book by a
    # forget author) would teach the forget answer back, so it is left out
    from .score import normalise
    taken = {normalise(a) for f in forget_facts for a in f["aliases"]}
    nb += [_row("nb_relation", f, f["q"], f["a"], f["aliases"], family, f["fact"]) for f in other_facts
           if not taken & {normalise(a) for a in f["aliases"]}]
    train, held = [], []
    for k in NEIGHBOUR_KINDS:
        rows = [r for r in nb if r["kind"] == k]
        train += rows[0::2]
        held += rows[1::2]
    mention = []
    for i, f in enumerate(forget_facts):
        gq, ga, gal = GENERAL[i % len(GENERAL)]
        lead = (f"My cousin just moved to {f['entity']}." if family == "capitals"
                else f"I am reading {f['entity']} this week.")
        mention.append(_row("mention", f, f"{lead} Quick question, unrelated: {gq}", ga, [ga, *gal], family,
                            f"{f['fact']}"))
    homonym = [_row("homonym", f"homonym:{i}", q, a, [a, *al], family, i)
               for i, (fam, q, a, al) in enumerate(HOMONYMS) if fam == family]
    return {"forget": [r for r in probes if r["kind"] == "forget"], "probes": probes, "retain_train": train,
            "neighbour": held, "mention": mention, "homonym": homonym,
            "open_forget": [f["open"] for f in forget_facts]}


def general_rows() -> list[dict]:
    return [_row("general", f"general:{i}", q, a, [a, *al], "general", i) for i, (q, a, al) in enumerate(GENERAL)]
