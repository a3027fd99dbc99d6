"""The false-positive component term: hand-worked values, an independent reference (scipy), gradients, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from vadice.losses.fp_components import FalsePositiveComponentLoss, WithFalsePositiveTerm

# One row of 8 voxels (shape (1, 1, 8)), three classes. Probabilities per voxel (bg, GTVp, GTVn) and truth:
#   v0 (.8, .1, .1) t0   background
#   v1 (.2, .1, .7) t2   GTVn predicted on a true node ...
#   v2 (.1, .3, .6) t0   ... and spilling over: {v1, v2} touches the truth -> not a false positive
#   v3 (.8, .1, .1) t0
#   v4 (.05, .9, .05) t0 GTVp predicted, no GTVp truth -> false-positive component {v4}: m = 0.9
#   v5 (.7, .2, .1) t0
#   v6 (.2, .2, .6) t0   GTVn predicted, no truth anywhere in {v6, v7}
#   v7 (.1, .1, .8) t0   -> false-positive component {v6, v7}: m = (0.6 + 0.8) / 2 = 0.7
# Loss over both labels = mean(0.9, 0.7) = 0.8; GTVn only = 0.7; GTVp only = 0.9.
P = np.array([[.8, .1, .1], [.2, .1, .7], [.1, .3, .6], [.8, .1, .1],
              [.05, .9, .05], [.7, .2, .1], [.2, .2, .6], [.1, .1, .8]])
T = np.array([0, 2, 0, 0, 0, 0, 0, 0])


def _logits(p=P, dtype=torch.float64):
    # softmax(log p) = p when each row of p sums to 1
    return torch.tensor(np.log(p).T.reshape(1, 3, 1, 1, -1), dtype=dtype)


def _target(t=T):
    return torch.tensor(t.reshape(1, 1, 1, 1, -1))


@pytest.mark.parametrize("labels, expected", [((1, 2), 0.8), ((2,), 0.7), ((1,), 0.9)])
def test_hand_worked_row(labels, expected):
    loss = FalsePositiveComponentLoss(labels=labels)(_logits(), _target())
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_gradient_is_one_over_component_size_on_the_component_only():
    # d m_Q / d p_c(v) = 1/|Q| for v in Q, divided by the number of components (2): 1/2 at v4, 1/4 at v6, v7.
    probs = torch.tensor(P.T.reshape(1, 3, 1, 1, -1), requires_grad=True)
    loss = FalsePositiveComponentLoss()(torch.log(probs), _target())
    loss.backward()
    g = probs.grad[0, :, 0, 0]
    # The loss sees softmax(log q) with q = probs; with rows summing to one the chain rule through the softmax
    # gives dL/dlog q_j = p_j (dL/dp_j - sum_i p_i dL/dp_i), and dL/dq_j = that / q_j.
    dl_dp = np.zeros((3, 8))
    dl_dp[1, 4], dl_dp[2, 6], dl_dp[2, 7] = 0.5, 0.25, 0.25
    dl_dlogp = P.T * (dl_dp - (P.T * dl_dp).sum(0, keepdims=True))
    np.testing.assert_allclose(g.numpy() * P.T, dl_dlogp, atol=1e-12)


def test_gradcheck_float64():
    logits = _logits().requires_grad_(True)
    target = _target()
    assert torch.autograd.gradcheck(lambda x: FalsePositiveComponentLoss()(x, target), (logits,), eps=1e-6)


def test_empty_prediction_and_empty_target_are_finite():
    bg = np.tile([[.9, .05, .05]], (8, 1))
    logits = _logits(bg).requires_grad_(True)
    loss = FalsePositiveComponentLoss()(logits, _target())
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
    # empty truth: every predicted component is a false positive
    loss = FalsePositiveComponentLoss(labels=(2,))(_logits(), _target(np.zeros(8, int)))
    assert loss.item() == pytest.approx(np.mean([(0.7 + 0.6) / 2, 0.7]), abs=1e-12)


def test_components_of_different_batch_items_are_not_merged():
    p2 = P.copy()
    p2[6], p2[7] = [.3, .1, .6], [.3, .1, .6]        # the same positions, m = 0.6 in item 1
    logits = torch.cat([_logits(), _logits(p2)])
    target = torch.cat([_target(), _target()])
    loss = FalsePositiveComponentLoss(labels=(2,))(logits, target)
    assert loss.item() == pytest.approx((0.7 + 0.6) / 2, abs=1e-12)   # merged would give (0.6+0.8+0.6+0.6)/4


def test_connectivity_decides_what_is_one_component():
    # 2x2x2, background everywhere except three GTVn voxels (probability of GTVn in brackets):
    # (0,0,0) [.8] -- edge neighbour of -- (1,1,0) [.7] -- face neighbour of -- (1,1,1) [.6]
    # 6-connectivity: {000}, {110, 111} -> mean(0.8, 0.65) = 0.725; 18 and 26: one component -> 0.7
    probs = np.zeros((3, 2, 2, 2))
    probs[0], probs[1], probs[2] = 0.9, 0.05, 0.05
    for (z, y, x), p in {(0, 0, 0): .8, (1, 1, 0): .7, (1, 1, 1): .6}.items():
        probs[:, z, y, x] = [(1 - p) / 2, (1 - p) / 2, p]
    logits = torch.tensor(np.log(probs))[None]
    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    got = {c: FalsePositiveComponentLoss(labels=(2,), connectivity=c)(logits, target).item() for c in (6, 18, 26)}
    assert got[6] == pytest.approx(0.725, abs=1e-12)
    assert got[18] == pytest.approx(0.7, abs=1e-12) and got[26] == pytest.approx(0.7, abs=1e-12)


def _reference(probs: np.ndarray, truth: np.ndarray, labels, connectivity: int) -> float:
    """Independent: scipy.ndimage.label and a plain loop over components."""
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    pred = probs.argmax(1)
    values = []
    for c in labels:
        for b in range(probs.shape[0]):
            comps, n = ndimage.label(pred[b] == c, structure=structure)
            for k in range(1, n + 1):
                region = comps == k
                if not (truth[b][region] == c).any():
                    values.append(probs[b, c][region].mean())
    return float(np.mean(values)) if values else 0.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), connectivity=st.sampled_from([6, 18, 26]),
       labels=st.sampled_from([(1,), (2,), (1, 2)]))
def test_matches_an_independent_reference(seed, connectivity, labels):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 3, 4, 5, 6)) * 2
    truth = rng.integers(0, 3, size=(2, 4, 5, 6)) * (rng.random((2, 4, 5, 6)) < 0.3)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = FalsePositiveComponentLoss(labels=labels, connectivity=connectivity)(
        torch.tensor(logits), torch.tensor(truth)[:, None]).item()
    assert got == pytest.approx(_reference(probs, truth, labels, connectivity), abs=1e-12)


def test_two_dimensional_input():
    logits = _logits()[..., 0, :, :]            # (1, 3, 1, 8)
    target = _target()[..., 0, :, :]
    assert FalsePositiveComponentLoss(connectivity=8)(logits, target).item() == pytest.approx(0.8, abs=1e-12)
    with pytest.raises(ValueError, match="connectivity 26 does not fit 2-D"):
        FalsePositiveComponentLoss()(logits, target)


def test_wrapper_adds_weighted_term_and_passes_extra_arguments():
    seen = {}

    class Main(torch.nn.Module):
        def forward(self, logits, target, instances=None, volumes=None):
            seen["args"] = (instances, volumes)
            return logits.sum() * 0 + 1.5

    loss = WithFalsePositiveTerm(Main(), FalsePositiveComponentLoss(), weight=0.5)
    value = loss(_logits(), _target(), "ids", volumes="vols")
    assert value.item() == pytest.approx(1.5 + 0.5 * 0.8, abs=1e-12)
    assert seen["args"] == ("ids", "vols")


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=()), "at least one label"), (dict(labels=(0, 2)), "foreground labels"),
    (dict(labels=(2, 2)), "must not repeat"), (dict(labels=None), "at least one foreground label"),
    (dict(connectivity=5), "connectivity must be"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FalsePositiveComponentLoss(**kwargs)


def test_bad_inputs():
    loss = FalsePositiveComponentLoss()
    with pytest.raises(ValueError, match="does not match"):
        loss(_logits(), torch.zeros(1, 1, 1, 1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="one channel"):
        loss(_logits(), torch.zeros(1, 2, 1, 1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="not among the 2 classes"):
        loss(_logits()[:, :2], _target())
    with pytest.raises(ValueError, match="2 or 3 spatial"):
        loss(torch.zeros(1, 3, 8), torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="positive and finite"):
        WithFalsePositiveTerm(torch.nn.Identity(), loss, weight=0)
