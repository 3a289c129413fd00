"""``--compile``: the training step under torch.compile, compiled once per process, same numbers as eager.

On the CPU the tests compile through inductor on a toy network (a ResNet-18 step takes about a minute to
compile on 2 cores) and through ``aot_eager`` on the real one; CUDA graphs (``reduce-overhead``) need a GPU
and are measured by benchmarks/gpu_study.sh.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from ptk import compiled
from ptk.config import ExperimentConfig
from ptk.network import Network, channel_stats
from ptk.sweep import cell_id
from ptk.train import Recipe, train_model
from ptk_plugins.resnet import CifarResNet18

from .fixtures import TINY, load_results


@pytest.fixture
def fresh_compiler():
    """No compiled step left from another test in this worker process, and counters from zero."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiled._COMPILED.clear()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    compiled._COMPILED.clear()


def toy(seed: int = 0) -> Network:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    return Network(net, torch.zeros(1), torch.ones(1))


def digits_problem(n: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:n] * 255 / 16).round().to(torch.uint8)[:, None]
    return x, torch.from_numpy(d.target[:n]).long()


def can_build_inductor_cpu_code() -> bool:
    """Inductor's CPU kernels are C++ built against Python's headers: both must be on the machine."""
    import sysconfig
    from pathlib import Path

    return bool(shutil.which("g++") or shutil.which("c++")) and (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


@pytest.mark.skipif(not can_build_inductor_cpu_code(), reason="inductor's CPU code needs a C++ compiler and Python.h")
def test_inductor_step_trains_the_same_weights_as_eager(fresh_compiler):
    """The compiled path (real inductor code on the CPU) is the eager step up to float rounding, and a second
    model reuses the first one's compiled code."""
    x, y = digits_problem(200)  # batches of 32: six full ones through the compiled step, a tail of 8 eagerly
    r = Recipe(epochs=2, batch_size=32, lr=1e-2)
    eager = train_model(toy(), x, y, r, 0)
    first = train_model(toy(), x, y, r, 0, compile_mode="default")
    second = train_model(toy(1), x[:150], y[:150], r, 0, compile_mode="default")  # other weights, other size
    for k, v in eager.state_dict().items():
        assert torch.allclose(v.float(), first.state_dict()[k].float(), atol=1e-4, rtol=1e-4), k
    assert not torch.allclose(second.net[0].weight, first.net[0].weight)  # it trained its own weights
    assert fresh_compiler["frames"]["ok"] == 1  # compiled once, for both models


def test_aot_eager_on_resnet18_matches_eager_and_compiles_once(fresh_compiler):
    """The real model's step through the compiler's capture and autograd tracing: same weights as eager, and
    every further model of the same architecture and batch size (a defense's retraining on fewer samples, an
    ensemble member) reuses the graph."""
    x, y = digits_problem(100)
    x = x.expand(-1, 3, -1, -1).contiguous()
    r = Recipe(epochs=1, batch_size=32, lr=1e-3)

    def model(seed: int) -> Network:
        torch.manual_seed(seed)
        return Network(CifarResNet18(10, width=4), *channel_stats(x))

    eager = train_model(model(0), x, y, r, 0)
    compiled_models = [train_model(model(s), x[:n], y[:n], r, 0, compile_mode="aot_eager")
                       for s, n in ((0, 100), (1, 90), (2, 70))]
    for k, v in eager.state_dict().items():
        assert torch.allclose(v.float(), compiled_models[0].state_dict()[k].float(), atol=1e-5), k
    assert fresh_compiler["frames"]["ok"] == 1
    assert fresh_compiler["stats"]["unique_graphs"] == 1


def test_auto_means_cuda_graphs_on_cuda_and_eager_on_the_cpu():
    assert compiled.resolve_compile("auto", torch.device("cuda")) == "reduce-overhead"
    assert compiled.resolve_compile("auto", torch.device("cpu")) == "off"
    assert compiled.resolve_compile("default", torch.device("cpu")) == "default"
    with pytest.raises(Exception, match="compile must be one of auto, off, .* got 'fastest'"):
        compiled.resolve_compile("fastest", torch.device("cpu"))


def test_compile_setting_is_checked_and_old_cells_keep_their_ids():
    with pytest.raises(Exception, match="compile must be one of auto, off, .* got 'fastest' \\(--compile\\)"):
        ExperimentConfig(compile="fastest")
    # a store written before the setting existed keeps resuming: the default leaves a cell's id as it was
    import hashlib
    import json

    config = ExperimentConfig(seed=3)
    before = {k: v for k, v in config.to_dict().items() if k != "compile"}
    assert cell_id(config) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert cell_id(ExperimentConfig(seed=3, compile="off")) != cell_id(config)


def test_cli_compile_is_recorded_and_keys_its_own_models(ptk, tmp_path, fresh_compiler):
    """`ptk run --compile aot_eager` trains through the compiled step, says so in results.json, and does not
    read the eager run's models from the cache (compiled kernels round differently)."""
    quick = [*TINY, "--epochs", "1", "--defense", "none"]
    ptk("run", *quick, "--out", tmp_path / "eager")
    ptk("run", *quick, "--compile", "aot_eager", "--out", tmp_path / "compiled")
    eager, comp = load_results(tmp_path / "eager"), load_results(tmp_path / "compiled")
    assert eager["resolved"]["trainer"]["compile"] == "off"  # auto on the CPU
    assert comp["config"]["compile"] == "aot_eager" and comp["resolved"]["trainer"]["compile"] == "aot_eager"
    assert not any(m.get("cached") for m in comp["models"])
    assert fresh_compiler["frames"]["ok"] == 1  # the clean and the poisoned model: one compiled step
    bad = ptk("run", *quick, "--compile", "fastest", "--out", tmp_path / "bad", expect=2)
    assert "fastest" in bad.output and "reduce-overhead" in bad.output
