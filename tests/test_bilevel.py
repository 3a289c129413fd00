"""Learning to reweight: the look-ahead weights are the meta-gradient, and the defense runs end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from .fixtures import TINY, load_results, model_row
from ptk.network import Network
from ptk_plugins.bilevel import ALL_HARMFUL, FLAT, WEIGHTED, look_ahead_weights, weights_from
from ptk_plugins.resnet import CifarResNet18


def tiny_network(seed: int = 0) -> Network:
    torch.manual_seed(seed)
    return Network(CifarResNet18(3, width=4), torch.full((3,), 0.5), torch.full((3,), 0.25))


def test_weights_are_the_clamped_normalised_gradient_alignment_and_leave_batchnorm_alone():
    net = tiny_network().train()
    gen = torch.Generator().manual_seed(0)
    xb = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=gen)
    yb = torch.randint(0, 3, (8,), generator=gen)
    meta_x, meta_y = xb[:1].flip(3), torch.tensor([2])
    buffers = {k: b.clone() for k, b in net.named_buffers()}

    w, case = look_ahead_weights(net, xb, yb, meta_x, meta_y, lr=0.1, smoothing=0.0)
    assert case == WEIGHTED

    for k, b in net.named_buffers():  # look-aheads must not move BatchNorm's running statistics
        assert torch.equal(b, buffers[k]), k
    assert net.training
    # Closed form at eps = 0: d meta / d eps_i = -lr <grad meta, grad ce_i>, the meta loss in eval mode,
    # ce_i with the batch's statistics (train mode), as in the real step.
    params = [p for p in net.parameters()]
    net.eval()
    g_meta = torch.autograd.grad(F.cross_entropy(net(meta_x), meta_y), params)
    net.train()
    ce = F.cross_entropy(net(xb), yb, reduction="none")
    align = torch.stack([
        sum((a * b).sum() for a, b in zip(g_meta, torch.autograd.grad(ce[i], params, retain_graph=True)))
        for i in range(len(yb))
    ])
    expected = align.clamp_min(0) / align.clamp_min(0).sum()
    assert (align > 0).any() and (align < 0).any()  # a real mix of helpful and harmful samples
    torch.testing.assert_close(w, expected, rtol=1e-3, atol=1e-6)
    assert abs(w.sum().item() - 1) < 1e-5 and (w >= 0).all()


def test_a_flat_meta_loss_gives_uniform_weights_and_all_harmful_gives_none():
    net = tiny_network().train()
    xb = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    # lr = 0 makes the look-ahead a no-op: the meta gradient is exactly zero, it says nothing about any sample
    w, case = look_ahead_weights(net, xb, torch.tensor([0, 1, 2, 0]), xb[:1], torch.tensor([0]), lr=0.0, smoothing=0.0)
    assert case == FLAT and torch.equal(w, torch.full((4,), 0.25))
    # every sample would raise the meta loss (positive d meta / d eps): no weight, the step is skipped
    w, case = weights_from(torch.tensor([1e-3, 2e-3, 0.0]))
    assert case == ALL_HARMFUL and torch.equal(w, torch.zeros(3))
    w, case = weights_from(torch.tensor([-3.0, 1.0, -1.0]))
    assert case == WEIGHTED and torch.equal(w, torch.tensor([0.75, 0.0, 0.25]))


@pytest.mark.slow
def test_bilevel_through_the_cli(ptk, tmp_path):
    """bilevel end to end; bilevel-trusted (the same loop with trusted clean images as the meta set) runs end to
    end in test_goals' ``--defense all`` test, which checks its meta set, steps and threat model."""
    out = tmp_path / "run"
    # TINY at the quick preset's lr 2e-3: at TINY's 3e-3 an AVX2 CPU trains a poisoned model the flip barely
    # moves (P(7) 0.30; 0.998 at 2e-3), so there would be no attack for bilevel to undo
    ptk("run", "--defense", "bilevel", *TINY, "--lr", "2e-3", "--out", out)
    r = load_results(out)
    assert r["status"] == "complete"
    n = r["data"]["train_size"]
    row = model_row(r, "bilevel")
    d = row["details"]
    assert (d["meta_set"], d["meta_size"], d["epochs"]) == ("target", 1, 5)
    assert d["steps"] == 5 * -(-n // 64)  # TINY: the quick preset's batch size, 64
    assert d["steps"] == d["steps_weighted"] + d["steps_flat_meta_loss_uniform"] + d["steps_all_harmful_skipped"]
    assert 0 < d["zero_weight_fraction"] < 1
    tgt = r["target"]["target_class"]
    bilevel, poisoned = row, model_row(r, "poisoned")
    # With the target as meta set, the flipped labels end with less weight than the rest (final-epoch
    # weights; 1 = uniform) and the target leaves the target class. The docs give the cost in accuracy.
    assert bilevel["mean_weight_poison"] < 0.8 * bilevel["mean_weight_clean"]
    assert bilevel["train_seconds"] > 0  # its own loop counts as training (ctx.own_training)
    assert bilevel["suspicion_auroc"] > 0.5  # the weights, read as suspicion (-weight), rank poison above clean
    assert bilevel["target_probs"][tgt] < poisoned["target_probs"][tgt] - 0.5
    assert r["plugins"]["bilevel"]["threat_model"]["knows_target"] is True
