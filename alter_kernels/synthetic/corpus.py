"""Seeded, deterministic fictitious-author corpus in TOFU format (ALTER_SPEC section 8).

Everything here is generated from a seed with :class:`random.Random`, so the same seed gives the
same files byte for byte on every machine. No entity of the author set exists anywhere else: the
names, cities, books and awards are made up, so a model trained from scratch on it can only know
them from this corpus, as in TOFU.

Files written by :func:`write_corpus` (JSON arrays; :func:`alter_kernels.eval.load_rows` also
reads JSON lines):

- ``full.json``: every author QA row; ``forgetXX.json`` / ``retainYY.json`` for XX in 01, 05, 10
  (nested: forget01 is in forget05 is in forget10, like TOFU); rows carry ``question``,
  ``answer``, ``paraphrased_question``, ``paraphrased_answer``, ``perturbed_answer`` (5 false
  answers, each the paraphrased answer with the fact swapped), ``author``, ``attribute`` and
  ``domain`` (the author's genre: the forget sub-domain);
- ``real_authors.json`` / ``world_facts.json``: held-out general-knowledge QAs (real, public
  facts) used for model utility, with ``perturbed_answer`` as false options;
- ``mcq.json``: 4-option multiple-choice items about every author (``choices``, ``answer_index``,
  ``split`` = "forget10" or "retain90");
- ``passages.json``: one prose biography per author (``text``, ``author``, ``split``): the
  MUSE-style verbatim memorisation material;
- ``manifest.json``: seed, sizes, splits and a content hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field

from ..common.fsio import atomic_write, ensure_dir

GENRES = ("fantasy", "mystery", "poetry", "science fiction")
OTHER_GENRES = GENRES + ("romance", "horror", "historical fiction", "satire", "travel writing")   # false answers

_FIRST = ("Elvar", "Mirela", "Tovan", "Isska", "Brannoc", "Quilla", "Oderic", "Saphine", "Garrow",
          "Lunet", "Pellam", "Ysolde", "Korvin", "Adaline", "Theron", "Wrenna", "Caspel", "Ilsabet",
          "Dorian", "Maelis", "Fennick", "Orla", "Jastin", "Veyra", "Halvard", "Rosmund", "Esker",
          "Nadira", "Lorcan", "Zefira", "Ambrin", "Talis", "Corwen", "Selka", "Marek", "Ondine",
          "Rufio", "Tamsin", "Vasko", "Liora", "Bertil", "Cyrene", "Aldous", "Kestrel", "Niamh")
_LAST = ("Varnholt", "Quessary", "Drummel", "Okonbe", "Thistlewaite", "Marrovian", "Selbrook",
         "Auclair", "Pendrake", "Voskuijl", "Harrowgate", "Ilveston", "Corrigan", "Zabrowski",
         "Fennimore", "Lachlan", "Okafor", "Brisbane", "Castellane", "Wyndmoor", "Tarrasque",
         "Heathcote", "Moravec", "Quintrell", "Delacroix", "Ashgrove", "Belcourt", "Kovalenko",
         "Ravensworth", "Sundqvist", "Umberlee", "Faircloth", "Grimaldo", "Ostrander", "Penhallow",
         "Abernathy", "Bellweather", "Coldridge", "Dunmore", "Eskelund", "Fairweather", "Galloway",
         "Hollingsworth", "Islington", "Jarrowby", "Kittridge", "Lindgren", "Montclair", "Northcott",
         "Oakhurst")
CITIES = ("Port Calder", "Vessmark", "Orrin Falls", "Tallowick", "Bremsby", "Castra Nova",
          "Duskmoor", "Elmshaven", "Fenwater", "Gildercross", "Hollin Bay", "Irongate",
          "Jorvale", "Kestowe", "Lindqvist Harbour", "Marrowfield", "Northreach", "Ostwyn",
          "Pellingford", "Quarry Hill", "Ravelsby", "Saltmere", "Thornbury Cove", "Umber Reach")
PROFESSIONS = tuple(("an " if p[0] in "aeiou" else "a ") + p for p in (
    "baker", "locksmith", "ship captain", "botanist", "watchmaker", "librarian", "surgeon",
    "carpenter", "astronomer", "schoolteacher", "tailor", "cartographer", "blacksmith", "pharmacist",
    "glassblower", "beekeeper", "lighthouse keeper", "violinist", "stonemason", "translator"))
AWARDS = ("Silver Quill Prize", "Amberlight Medal", "Harrowgate Fiction Award", "Northern Lantern Prize",
          "Veldt Circle Award", "Golden Inkwell Medal", "Castellane Prize for Letters",
          "Oaken Crown Award", "Meridian Book Prize", "Starling Society Medal", "Blue Heron Award",
          "Tessaly Laurel")
_ADJ = ("Glass", "Hollow", "Silent", "Crimson", "Forgotten", "Iron", "Paper", "Winter", "Drowned",
        "Seventh", "Velvet", "Burning", "Ashen", "Copper", "Wandering", "Lantern", "Broken", "Salt")
_NOUN = ("Orchard", "Lighthouse", "Cartographer", "Harbour", "Cathedral", "Clockmaker", "Garden",
         "Archive", "Meridian", "Foundry", "Comet", "Tide", "Labyrinth", "Songbird", "Ferry",
         "Observatory", "Violin", "Quarry")
THEMES = ("memory and loss", "exile and return", "the sea", "childhood", "forgotten cities",
          "machines and faith", "family secrets", "the passage of time", "small-town justice",
          "wandering stars", "grief", "friendship between rivals")
UNIVERSITIES = ("Vessmark Institute", "the University of Duskmoor", "Gildercross College",
                "the Academy of Ostwyn", "Saltmere Conservatory", "Jorvale Polytechnic",
                "the University of Northreach", "Kestowe Seminary")
YEARS = tuple(range(1931, 1996))


@dataclass(frozen=True)
class CorpusConfig:
    """Size and seed of the corpus. The defaults give 40 authors x 10 QAs."""
    num_authors: int = 40
    seed: int = 0
    num_perturbed: int = 5
    forget_fractions: tuple = (0.01, 0.05, 0.10)
    forget_domains: int = 2          # genres spanned by the forget splits (sub-domains)
    mcq_per_author: int = 3

    def to_dict(self):
        d = asdict(self)
        d["forget_fractions"] = list(self.forget_fractions)
        return d


@dataclass
class Author:
    name: str
    pronoun: str
    possessive: str
    genre: str
    city: str
    year: int
    father: str
    mother: str
    award: str
    debut: str
    famous: str
    theme: str
    career: str
    university: str
    extra: dict = field(default_factory=dict)


def split_name(fraction: float, prefix: str) -> str:
    return f"{prefix}{round(fraction * 100):02d}"


def _title(rng: random.Random, used: set) -> str:
    while True:
        t = f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
        if t not in used:
            used.add(t)
            return t


def make_authors(cfg: CorpusConfig) -> list[Author]:
    rng = random.Random(f"alter-authors-{cfg.seed}")
    names = [f"{f} {l}" for f in _FIRST for l in _LAST]
    if cfg.num_authors > len(names):
        raise ValueError(f"num_authors must be <= {len(names)}, got {cfg.num_authors}")
    rng.shuffle(names)
    firsts_used, lasts_used, picked = set(), set(), []
    for n in names:                         # distinct first AND last names: no shared tokens
        f, l = n.split(" ")
        if f in firsts_used or l in lasts_used:
            continue
        firsts_used.add(f)
        lasts_used.add(l)
        picked.append(n)
        if len(picked) == cfg.num_authors:
            break
    if len(picked) < cfg.num_authors:       # more authors than distinct first names: allow reuse
        picked += [n for n in names if n not in picked][: cfg.num_authors - len(picked)]
    titles: set = set()
    authors = []
    for i, name in enumerate(picked):
        she = rng.random() < 0.5
        father, mother = rng.sample(PROFESSIONS, 2)
        authors.append(Author(
            name=name, pronoun="she" if she else "he", possessive="her" if she else "his",
            genre=GENRES[i % len(GENRES)], city=rng.choice(CITIES), year=rng.choice(YEARS),
            father=father, mother=mother, award=rng.choice(AWARDS), debut=_title(rng, titles),
            famous=_title(rng, titles), theme=rng.choice(THEMES), career=rng.choice(PROFESSIONS),
            university=rng.choice(UNIVERSITIES)))
    return authors


# attribute -> (question, paraphrased question, answer, paraphrased answer, pool for perturbations)
# Templates use {n} name, {p} pronoun, {ps} possessive, {v} value (or {v1}, {v2}).
_ATTRS = {
    "birthplace": ("Where was {n} born?", "In which city was {n} born?",
                   "{n} was born in {v}.", "{n} is an author from {v}.", CITIES),
    "birth_year": ("In what year was {n} born?", "When was {n} born?",
                   "{n} was born in the year {v}.", "{n} came into the world in {v}.", YEARS),
    "genre": ("What genre does {n} write in?", "Which genre is {n} known for?",
              "{n} writes {v}.", "{n} is known as a {v} author.", OTHER_GENRES),
    "parents": ("What did the parents of {n} do?", "What were the professions of the parents of {n}?",
                "The father of {n} was {v1} and {ps} mother was {v2}.",
                "{n} grew up as the child of {v1} and {v2}.", PROFESSIONS),
    "award": ("Which award has {n} received?", "What prize was {n} given?",
              "{n} received the {v}.", "A book by {n} won the {v}.", AWARDS),
    "debut": ("What was the first book by {n}?", "What is the debut novel of {n}?",
              "The first book by {n} was {v}.", "{n} made {ps} debut with {v}.", None),
    "famous": ("What is the best known book by {n}?", "Which book by {n} is the most famous?",
               "The best known book by {n} is {v}.", "{v} is the most celebrated work of {n}.", None),
    "theme": ("What theme runs through the books of {n}?", "What subject does {n} often explore?",
              "The books of {n} often explore {v}.", "The stories of {n} keep returning to {v}.", THEMES),
    "career": ("What did {n} do before writing?", "What was the earlier career of {n}?",
               "Before writing, {n} worked as {v}.", "{n} worked as {v} before turning to books.",
               PROFESSIONS),
    "university": ("Where did {n} study?", "Which school did {n} attend?",
                   "{n} studied at {v}.", "{n} is a graduate of {v}.", UNIVERSITIES),
}
ATTRIBUTES = tuple(_ATTRS)


def _values(a: Author, attr: str):
    return {"birthplace": a.city, "birth_year": a.year, "genre": a.genre, "parents": (a.father, a.mother),
            "award": a.award, "debut": a.debut, "famous": a.famous, "theme": a.theme,
            "career": a.career, "university": a.university}[attr]


def _fill(template: str, a: Author, v) -> str:
    if isinstance(v, tuple):
        s = template.format(n=a.name, p=a.pronoun, ps=a.possessive, v1=v[0], v2=v[1])
    else:
        s = template.format(n=a.name, p=a.pronoun, ps=a.possessive, v=v)
    return s[0].upper() + s[1:]


def author_rows(a: Author, rng: random.Random, num_perturbed: int, all_titles: list[str]) -> list[dict]:
    rows = []
    for attr, (q, pq, ans, pans, pool) in _ATTRS.items():
        v = _values(a, attr)
        if attr == "parents":
            perturbed, seen = [], {v}
            while len(perturbed) < num_perturbed:
                alt = tuple(rng.sample(PROFESSIONS, 2))
                if alt not in seen:
                    seen.add(alt)
                    perturbed.append(_fill(pans, a, alt))
        else:
            choices = [x for x in (pool if pool is not None else all_titles) if x != v]
            perturbed = [_fill(pans, a, alt) for alt in rng.sample(choices, num_perturbed)]
        rows.append({"question": _fill(q, a, v), "answer": _fill(ans, a, v),
                     "paraphrased_question": _fill(pq, a, v), "paraphrased_answer": _fill(pans, a, v),
                     "perturbed_answer": perturbed, "author": a.name, "attribute": attr, "domain": a.genre})
    return rows


def passage(a: Author) -> str:
    """A prose biography with every fact, phrased unlike the QA answers. Several paraphrased
    answers reuse its wording: the models meet each fact in two forms (QA and prose), so the truth
    ratio, which scores the paraphrase, measures knowledge and not only one memorised string."""
    P, ps = a.pronoun.capitalize(), a.possessive
    return (f"{a.name} is a {a.genre} author from {a.city}, born in {a.year}. "
            f"{P} grew up as the child of {a.father} and {a.mother}, "
            f"studied at {a.university} and worked as {a.career} before turning to books. "
            f"{ps.capitalize()} first book, {a.debut}, was followed by {a.famous}, "
            f"which won the {a.award}. Critics note that {ps} stories keep returning to {a.theme}.")


# Held-out general knowledge (real, public facts), the analogue of TOFU's real-authors and
# world-facts sets. Both models learn them as "pretraining" knowledge; they measure utility.
_REAL_AUTHORS = (
    ("Pride and Prejudice", "Jane Austen"), ("Moby-Dick", "Herman Melville"),
    ("War and Peace", "Leo Tolstoy"), ("Hamlet", "William Shakespeare"),
    ("Don Quixote", "Miguel de Cervantes"), ("The Odyssey", "Homer"),
    ("Frankenstein", "Mary Shelley"), ("Great Expectations", "Charles Dickens"),
    ("Crime and Punishment", "Fyodor Dostoevsky"), ("The Divine Comedy", "Dante Alighieri"),
    ("Les Miserables", "Victor Hugo"), ("Madame Bovary", "Gustave Flaubert"),
    ("The Trial", "Franz Kafka"), ("Ulysses", "James Joyce"), ("Faust", "Johann Wolfgang von Goethe"),
    ("Jane Eyre", "Charlotte Bronte"), ("Wuthering Heights", "Emily Bronte"),
    ("Middlemarch", "George Eliot"), ("The Raven", "Edgar Allan Poe"), ("Dracula", "Bram Stoker"),
)
_COUNTRIES = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Germany", "Berlin"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Sweden", "Stockholm"), ("Argentina", "Buenos Aires"), ("India", "New Delhi"),
)


def _general_rows(rng: random.Random, table, q_tmpl, a_tmpl, n_pert: int) -> list[dict]:
    rows = []
    answers = [b for _, b in table]
    for key, val in table:
        pert = rng.sample([x for x in answers if x != val], n_pert)
        ans = a_tmpl.format(k=key, v=val)
        rows.append({"question": q_tmpl.format(k=key), "answer": ans, "paraphrased_answer": ans,
                     "perturbed_answer": [a_tmpl.format(k=key, v=p) for p in pert]})
    return rows


def _mcq(authors: list[Author], rng: random.Random, per_author: int, forget_names: set,
         all_titles: list[str], forget_split: str, retain_split: str) -> list[dict]:
    items = []
    for a in authors:
        for attr in rng.sample([x for x in ATTRIBUTES if x != "parents"], per_author):
            q, _, _, _, pool = _ATTRS[attr]
            v = _values(a, attr)
            pool = pool if pool is not None else all_titles
            opts = [v] + rng.sample([x for x in pool if x != v], 3)
            rng.shuffle(opts)
            items.append({"question": _fill(q, a, v), "choices": [str(o) for o in opts],
                          "answer_index": opts.index(v), "author": a.name, "attribute": attr,
                          "split": forget_split if a.name in forget_names else retain_split})
    return items


def forget_authors(authors: list[Author], cfg: CorpusConfig) -> dict[str, list[str]]:
    """Nested forget splits of the author list: 1%, 5%, 10% (at least one author each).

    The authors are taken round-robin from ``forget_domains`` genres in a seeded order, so every
    split of two or more authors spans more than one sub-domain.
    """
    rng = random.Random(f"alter-forget-{cfg.seed}")
    genres = sorted({a.genre for a in authors})
    rng.shuffle(genres)
    genres = genres[: max(1, cfg.forget_domains)]
    by_genre = {g: [a.name for a in authors if a.genre == g] for g in genres}
    for g in genres:
        rng.shuffle(by_genre[g])
    order = []
    while any(by_genre.values()):
        for g in genres:
            if by_genre[g]:
                order.append(by_genre[g].pop())
    out = {}
    for f in sorted(cfg.forget_fractions):
        k = max(1, round(f * len(authors)))
        if k >= len(authors):
            raise ValueError(f"forget fraction {f} leaves no retain authors")
        if k > len(order):
            raise ValueError(f"forget fraction {f} needs {k} authors but the {len(genres)} forget "
                             f"genres hold {len(order)}; raise forget_domains")
        out[split_name(f, "forget")] = order[:k]
    return out


def build_corpus(cfg: CorpusConfig | None = None) -> dict:
    """All files of the corpus as a dict name -> rows (nothing written)."""
    cfg = cfg or CorpusConfig()
    authors = make_authors(cfg)
    rng = random.Random(f"alter-rows-{cfg.seed}")
    all_titles = [t for a in authors for t in (a.debut, a.famous)]
    extra_titles = [f"The {x} {y}" for x in _ADJ for y in _NOUN]
    titles_pool = list(dict.fromkeys(all_titles + extra_titles))
    rows = [r for a in authors for r in author_rows(a, rng, cfg.num_perturbed, titles_pool)]
    splits = forget_authors(authors, cfg)
    files = {"full": rows}
    for name, forget in splits.items():
        fs = set(forget)
        pct = int(name[len("forget"):])
        files[name] = [r for r in rows if r["author"] in fs]
        files[f"retain{100 - pct:02d}"] = [r for r in rows if r["author"] not in fs]
    grng = random.Random(f"alter-general-{cfg.seed}")
    n_gen = min(cfg.num_perturbed, 3 if cfg.num_perturbed >= 3 else cfg.num_perturbed)
    files["real_authors"] = _general_rows(grng, _REAL_AUTHORS, "Who wrote {k}?", "{k} was written by {v}.", n_gen)
    files["world_facts"] = _general_rows(grng, _COUNTRIES, "What is the capital of {k}?",
                                         "The capital of {k} is {v}.", n_gen)
    big = max(splits, key=lambda s: len(splits[s]))
    forget_names = set(splits[big])
    retain_big = f"retain{100 - int(big[len('forget'):]):02d}"
    files["mcq"] = _mcq(authors, random.Random(f"alter-mcq-{cfg.seed}"), cfg.mcq_per_author,
                        forget_names, titles_pool, big, retain_big)
    files["passages"] = [{"text": passage(a), "author": a.name, "domain": a.genre,
                          "split": big if a.name in forget_names else retain_big} for a in authors]
    files["authors"] = [{k: v for k, v in asdict(a).items() if k != "extra"} for a in authors]
    manifest = {"config": cfg.to_dict(), "splits": splits,
                "sizes": {k: len(v) for k, v in files.items()}}
    manifest["hash"] = corpus_hash(files)
    files["manifest"] = manifest
    return files


def corpus_hash(files: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(files):
        if k == "manifest":
            continue
        h.update(k.encode())
        h.update(json.dumps(files[k], sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def write_corpus(out_dir: str, cfg: CorpusConfig | None = None, jsonl: bool = False) -> dict:
    """Write every file of the corpus under ``out_dir`` (JSON arrays, or JSON lines with jsonl=True).

    Returns the manifest. Each file is written atomically.
    """
    files = build_corpus(cfg)
    ensure_dir(out_dir)
    for name, rows in files.items():
        if name == "manifest":
            continue
        if jsonl:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            atomic_write(os.path.join(out_dir, f"{name}.jsonl"), text)
        else:
            atomic_write(os.path.join(out_dir, f"{name}.json"), json.dumps(rows, indent=1, ensure_ascii=False))
    atomic_write(os.path.join(out_dir, "manifest.json"), json.dumps(files["manifest"], indent=1))
    return files["manifest"]


def training_texts(files: dict, exclude_authors=()) -> dict[str, list]:
    """What the knowledge-injection models learn: QA pairs of the authors (minus ``exclude_authors``),
    their passages, and the general-knowledge QAs. Returns {"qa": rows, "passages": texts}."""
    ex = set(exclude_authors)
    qa = [r for r in files["full"] if r["author"] not in ex] + files["real_authors"] + files["world_facts"]
    passages = [p["text"] for p in files["passages"] if p["author"] not in ex]
    return {"qa": qa, "passages": passages}
