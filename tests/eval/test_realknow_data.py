"""The real-knowledge benchmark's data (alter_kernels.realknow): integrity without a model."""
import pytest

from alter_kernels.realknow import FAMILIES, FORGET_WORDINGS, candidate_facts, family_rows, general_rows
from alter_kernels.realknow.general import HOMONYMS, OPEN_RETAIN, PASSAGES
from alter_kernels.realknow.score import accuracy_by_kind, is_correct, normalise


def _fam(family, n=20):
    facts = candidate_facts(family)
    return facts, family_rows(family, facts[:n], facts[n:])


@pytest.mark.parametrize("family", FAMILIES)
def test_no_forget_fact_in_retain_rows(family):
    facts, fam = _fam(family)
    forget = facts[:20]
    for r in fam["retain_train"] + fam["neighbour"]:
        text = normalise(r["question"] + " " + r["answer"])
        for f in forget:
            # a retain row may name the forget entity or the forget answer, never both (the fact)
            has_entity = normalise(f["entity"]) in text
            has_answer = any(normalise(a) in text for a in f["aliases"])
            assert not (has_entity and has_answer), (r["id"], f["fact"])
        assert r["fact"] not in {f["fact"] for f in forget} or r["kind"] == "nb_entity"
    # same-relation neighbours are other facts: no forget answer among their accepted answers
    forget_answers = {normalise(a) for f in forget for a in f["aliases"]}
    for r in fam["retain_train"] + fam["neighbour"]:
        if r["kind"] == "nb_relation":
            assert not forget_answers & {normalise(a) for a in r["aliases"]}, r["id"]


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_have_aliases_unique_ids_and_every_wording(family):
    _, fam = _fam(family)
    rows = fam["probes"] + fam["retain_train"] + fam["neighbour"] + fam["mention"] + fam["homonym"]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert all(r["aliases"] and all(a.strip() for a in r["aliases"]) for r in rows)
    kinds = {r["kind"] for r in fam["probes"]}
    want = set(FORGET_WORDINGS) - ({"partial"} if family == "capitals" else set())
    assert want <= kinds
    assert len(fam["forget"]) == 20
    # held-out wordings differ from the trained question
    trained = {r["fact"]: r["question"] for r in fam["forget"]}
    for r in fam["probes"]:
        if r["kind"] not in ("forget", "multiturn"):
            assert r["question"] != trained[r["fact"]], r["id"]
    # the train / held-out neighbour split is disjoint
    assert not {r["id"] for r in fam["retain_train"]} & {r["id"] for r in fam["neighbour"]}
    assert fam["retain_train"] and fam["neighbour"]


def test_families_disjoint_and_general_rows_name_no_forget_entity():
    facts = {f: candidate_facts(f) for f in FAMILIES}
    assert not {x["fact"] for x in facts["capitals"]} & {x["fact"] for x in facts["books"]}
    entities = [normalise(x["entity"]) for fs in facts.values() for x in fs]
    answers = [normalise(a) for fs in facts.values() for x in fs for a in x["aliases"]]
    for r in general_rows():
        q = normalise(r["question"])
        assert not any(e in q for e in entities), r["question"]
        assert not any(normalise(a) in answers for a in r["aliases"]), r["question"]
    for t in list(PASSAGES) + list(OPEN_RETAIN):
        assert not any(e in normalise(t) for e in entities), t
    for fam, q, a, _ in HOMONYMS:
        assert fam in FAMILIES and a.strip()


def test_indirect_probes_do_not_name_the_entity():
    for family in FAMILIES:
        _, fam = _fam(family)
        for r in fam["probes"]:
            if r["kind"] == "indirect":
                f = r["entity"]
                assert normalise(f) not in normalise(r["question"]), r["question"]


def test_alias_matching_and_base_known_accuracy():
    assert is_correct("The capital of France is Paris.", ["Paris"])
    assert is_correct("It is BRASILIA, of course", ["Brasília"])
    assert not is_correct("Parisian food is good", ["Paris"])          # whole words only
    assert not is_correct("I do not know.", ["Paris"])
    with pytest.raises(ValueError):
        is_correct("x", [])
    rows = [{"id": "a", "kind": "forget"}, {"id": "b", "kind": "forget"}, {"id": "c", "kind": "general"}]
    acc = accuracy_by_kind(rows, {"a": {"correct": False}, "b": {"correct": True}, "c": {"correct": True}},
                           {"a": True, "b": False, "c": True})
    assert acc["forget"] == {"acc": 0.0, "n": 1, "n_total": 2}
    assert acc["general"]["acc"] == 1.0


def _m(forget_acc, nb, gen, rep, nll):
    return {"acc": {"forget": forget_acc, "template": forget_acc, "general": gen},
            "n": {"forget": 10, "template": 10, "general": 16}, "neighbour": nb,
            "fluency_forget": {"repetition": rep}, "fluency_retain": {"repetition": rep}, "nll_ratio": nll}


def test_selection_score_rewards_forgetting_and_punishes_damage():
    from alter_kernels.realknow.report import selection_score
    base = _m(1.0, 0.9, 0.8, 0.1, 1.0)
    assert selection_score(base, base) == 0.0                       # nothing forgotten
    good = selection_score(_m(0.0, 0.9, 0.8, 0.1, 1.0), base)
    assert good == pytest.approx(1.0)                               # forgot all, kept everything
    looping = selection_score(_m(0.0, 0.9, 0.8, 0.8, 1.0), base)
    damaged = selection_score(_m(0.0, 0.45, 0.8, 0.1, 1.0), base)
    worse_lm = selection_score(_m(0.0, 0.9, 0.8, 0.1, 1.5), base)
    assert looping < good and damaged < good and worse_lm < good
    # harmonic mean of (1, 0.5, 1, 1, 1) = 5 / 6
    assert damaged == pytest.approx(5 / 6)


def _toy_family():
    """A capitals family (10 forget, 10 other facts, 4 general rows) and its eval rows."""
    from alter_kernels.realknow import bench
    facts = candidate_facts("capitals")
    fam = family_rows("capitals", facts[:10], facts[10:20])
    fam["general"] = general_rows()[:4]
    fam["n_known"], fam["n_total"] = 20, len(facts)
    return fam, bench.eval_rows(fam)


def _all_correct(rows):
    """An evaluation that answers every row correctly, with plain open generations."""
    gens = ["Rivers flow to the sea and the sea is salty."] * 3
    return {"answers": {r["id"]: {"answer": "", "correct": True} for r in rows}, "open_forget": gens,
            "open_retain": gens, "passage_nll": 2.0}


def test_metrics_keep_retain_training_rows_out_of_held_out_neighbours():
    from alter_kernels.realknow import bench
    fam, rows = _toy_family()
    train = {r["id"] for r in fam["retain_train"]}
    base = _all_correct(rows)
    bp = {"family": "capitals", "rows": fam, "base": base, "base_correct": {r["id"]: True for r in rows}}
    cell = dict(base, answers={r["id"]: {"answer": "", "correct": r["id"] not in train} for r in rows},
                passage_nll=2.2)
    m = bench.metrics(bp, cell)
    assert m["neighbour"] == 1.0 and m["acc"]["retain_train"] == 0.0
    assert m["nll_ratio"] == pytest.approx(1.1)


def test_routing_shares_per_kind_reach_the_table():
    from alter_kernels.realknow import bench
    from alter_kernels.realknow.report import aggregate, flat, routing_table
    fam, rows = _toy_family()
    base = _all_correct(rows)
    unknown = rows[-1]["id"]                                   # a row the base model misses is not counted
    bp = {"family": "capitals", "rows": fam, "base": base,
          "base_correct": {r["id"]: r["id"] != unknown for r in rows}}
    routed = {r["id"]: r["kind"] in ("forget", "lower") or r["id"] == unknown for r in rows}
    m = bench.metrics(bp, dict(base, routed=routed))
    assert m["routed"]["forget"] == 1.0 and m["routed"]["lower"] == 1.0 and m["routed"]["general"] == 0.0
    assert all(v == 0.0 for k, v in m["routed"].items() if k not in ("forget", "lower"))
    assert "routed" not in bench.metrics(bp, base)             # an unrouted method: no routing numbers
    table = routing_table({"alter": aggregate([flat(m)]), "graddiff": aggregate([flat(bench.metrics(bp, base))])})
    assert "| alter |" in table and "graddiff" not in table and "1.00" in table
    assert routing_table({"graddiff": aggregate([flat(bench.metrics(bp, base))])}) is None
