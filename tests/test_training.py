"""Trainer building blocks: batched augmentation, the model plugin, reproducibility, weights."""

from __future__ import annotations

import pytest
import torch

from ptk.augment import random_crop_flip
from ptk.network import Network, channel_stats
from ptk.train import Recipe, named_recipe, train_model
from ptk_plugins.resnet import CifarResNet18


def test_crop_flip_is_a_shifted_window_of_the_padded_image():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):  # every output is some crop of the padded input, maybe flipped
        found = any(
            torch.equal(out[i], c) or torch.equal(out[i], c.flip(2))
            for dy in range(9) for dx in range(9) for c in [padded[i, :, dy:dy + 32, dx:dx + 32]]
        )
        assert found
    again = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, x)


def test_epoch_draws_are_the_per_batch_stream_made_in_one_go():
    """train_model draws a whole epoch's augmentation up front (one copy to the GPU per epoch);
    the batches must be exactly those of shuffling then calling random_crop_flip batch by batch,
    so a seed means the same training run whichever way the numbers are drawn."""
    from ptk.train import epoch_batches, training_batch

    x = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8)
    for n, bs in ((70, 32), (65, 32), (64, 64)):  # tail of 6, a size-1 tail (dropped), no tail
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        batches = epoch_batches(n, bs, g1, torch.device("cpu"), augment=True)
        order = torch.randperm(n, generator=g2)
        chunks = [c for c in order.split(bs) if len(c) >= 2]
        assert len(batches) == len(chunks)
        for b, idx in zip(batches, chunks):
            assert torch.equal(b.idx, idx)
            assert torch.equal(training_batch(x, b), random_crop_flip(x[idx], g2))
        assert torch.equal(g1.get_state(), g2.get_state())  # the next epoch starts from the same state
        plain = epoch_batches(n, bs, torch.Generator().manual_seed(5), torch.device("cpu"))
        assert plain[0].offsets is None and torch.equal(training_batch(x, plain[0]), x[plain[0].idx])


def test_resnet18_shapes_and_features():
    for width in (8, 64):
        net = CifarResNet18(10, width=width)
        x = torch.randn(2, 3, 32, 32)
        assert net.features(x).shape == (2, 8 * width)
        assert torch.allclose(net.head(net.features(x)), net(x))
    assert sum(p.numel() for p in CifarResNet18(10).parameters()) == 11_173_962  # standard CIFAR ResNet-18


def tiny_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    return x, y


def make_model(x, seed=0, classes=3, width=4):
    torch.manual_seed(seed)
    return Network(CifarResNet18(classes, width=width), *channel_stats(x))


def test_same_seed_same_weights_on_cpu():
    x, y = tiny_problem()
    r = Recipe(epochs=2, batch_size=32, lr=1e-3)
    a = train_model(make_model(x), x, y, r, seed=3)
    b = train_model(make_model(x), x, y, r, seed=3)
    c = train_model(make_model(x), x, y, r, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_zero_weights_mean_no_learning_from_those_samples():
    x, y = tiny_problem()
    r = Recipe(epochs=1, batch_size=32, lr=1e-3, augment=False)
    before = make_model(x)
    start = {k: v.clone() for k, v in before.state_dict().items()}
    after = train_model(before, x, y, r, seed=0, weights=torch.zeros(len(y)))
    params = dict(after.named_parameters())
    assert all(torch.equal(start[k], params[k]) for k in params)  # zero loss weight -> zero gradient


@pytest.mark.slow
def test_fast_recipe_learns_on_real_digits_on_the_cpu():
    """The GPU recipe's code path (SGD Nesterov, label smoothing, schedule; autocast and
    channels_last are CPU no-ops) trains a model that beats chance by far on real digits."""
    from ptk_plugins.digits import Digits

    data = Digits().load(None, {"test_fraction": 0.25}).subset(600, 300, seed=0)
    model = make_model(data.x_train, classes=10, width=8)
    model = train_model(model, data.x_train, data.y_train, named_recipe("fast", epochs=6, batch_size=64, lr=0.1), 0)
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert acc > 0.5, acc
