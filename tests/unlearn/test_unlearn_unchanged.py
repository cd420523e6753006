"""A run that leaves the forget set's loss where it started says so (issue 27): the engine warns,
naming the learning rates to scale, and records it on the result; a run that unlearns does not."""
import copy
import math
import warnings

import pytest
import torch

import alter_kernels as ak
from alter_kernels.unlearn.data import collate, prepare
from alter_kernels.unlearn.evaluation import UNCHANGED_FORGET_NATS, forget_unchanged
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer

FORGET = toy_rows(6, seed=1)
RETAIN = toy_rows(6, seed=2, offset=6)
TOK = toy_tokenizer(FORGET + RETAIN)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def memorised():
    """The toy model after full fine-tuning on forget + retain: forget NLL near 0, as in the demo."""
    torch.manual_seed(0)
    m = toy_model(len(TOK), seed=0)
    _, ex = prepare(FORGET + RETAIN, TOK, "train")
    ids, att, lab = collate(ex, TOK.pad_token_id)
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    for _ in range(30):
        m(input_ids=ids, attention_mask=att, labels=lab).loss.backward()
        opt.step()
        opt.zero_grad()
    return m


def _run(model, **kw):
    return ak.unlearn(copy.deepcopy(model), FORGET, RETAIN, tokenizer=TOK, epochs=2, batch_size=3, progress=False,
                      **kw)


def test_the_threshold_is_a_halved_answer_probability():
    assert UNCHANGED_FORGET_NATS == pytest.approx(math.log(2))
    assert forget_unchanged(0.001, 0.001 + 0.69) and not forget_unchanged(0.001, 0.001 + 0.70)
    assert forget_unchanged(2.0, 1.0)                       # the forget loss went down: relearning
    assert not forget_unchanged(3.0, 9.0)


def test_a_run_at_a_tiny_learning_rate_warns(memorised):
    with pytest.warns(UserWarning, match=r"unlearn\[graddiff\]: the forget set is essentially not unlearned") as rec:
        res = _run(memorised, method="graddiff", lr=1e-7)
    msg = next(str(w.message) for w in rec if "not unlearned" in str(w.message))
    start, end = res.forget_nll
    assert res.forget_unchanged is True and end - start < math.log(2) and start < 0.5
    assert f"{start:.3g} -> {end:.3g}" in msg
    assert "lr=1e-07" in msg and "--lr 3e-06" in msg          # names the rate and the x30 suggestion


def test_an_adapter_run_names_its_own_rates(memorised):
    with pytest.warns(UserWarning, match=r"lr_A=1e-06, lr_B=1e-06, lr_router=1e-06.*--lr-A 3e-05 --lr-B 3e-05"):
        res = _run(memorised, method="asymlora", lr_A=1e-6, lr_B=1e-6, lr_router=1e-6)
    assert res.forget_unchanged is True


def test_a_run_that_unlearns_does_not_warn(memorised):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = _run(memorised, method="graddiff", lr=1e-2)
    start, end = res.forget_nll
    assert end - start > math.log(2), (start, end)
    assert res.forget_unchanged is False
    assert not [w for w in rec if "not unlearned" in str(w.message)]


def test_without_the_per_epoch_evaluation_nothing_is_measured(memorised):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = _run(memorised, method="graddiff", lr=1e-7, eval_each_epoch=False)
    assert res.forget_unchanged is None and res.forget_nll == (None, None)
    assert not [w for w in rec if "not unlearned" in str(w.message)]
