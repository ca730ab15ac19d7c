"""The six architectures are exactly the lecture's (SPEC §1) and the catalog is consistent."""

from __future__ import annotations

import pytest
import torch

from models import nets
from models.catalog import CATALOG, MODEL_NAMES, UnknownModel, get_spec


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Parameter counts follow from the layer list alone, so any deviation from SPEC §1 changes them.
EXPECTED_PARAMS = {
    "diabetes": (8 * 6 + 6) + (6 * 4 + 4) + (4 * 1 + 1),
    "mnist-fc": (784 * 512 + 512) + (512 * 256 + 256) + (256 * 128 + 128) + (128 * 64 + 64)
    + (64 * 10 + 10),
    "mnist-cnn": (1 * 10 * 25 + 10) + (10 * 20 * 25 + 20) + (320 * 10 + 10),
}


def inception_params(c: int) -> int:
    return ((c * 16 + 16) + (c * 16 + 16) + (16 * 24 * 25 + 24) + (c * 16 + 16)
            + (16 * 24 * 9 + 24) + (24 * 24 * 9 + 24) + (c * 24 + 24))


EXPECTED_PARAMS["mnist-googlenet"] = ((1 * 10 * 25 + 10) + inception_params(10)
                                      + (88 * 20 * 25 + 20) + inception_params(20)
                                      + (1408 * 10 + 10))
EXPECTED_PARAMS["mnist-resnet"] = ((1 * 16 * 25 + 16) + 2 * (16 * 16 * 9 + 16) + (16 * 32 * 25 + 32)
                                   + 2 * (32 * 32 * 9 + 32) + (512 * 10 + 10))


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "char-rnn"])
def test_architecture_parameter_counts_and_output_shape(name: str) -> None:
    spec = get_spec(name)
    net = spec.build()
    assert n_params(net) == EXPECTED_PARAMS[name]
    shape = [3, *spec.inputs[0].shape[1:]]
    out = net(torch.rand(*shape))
    assert list(out.shape) == [3, spec.outputs[0].shape[1]]


def test_inception_concatenates_88_channels() -> None:
    block = nets.InceptionA(10)
    assert block(torch.rand(2, 10, 12, 12)).shape == (2, 88, 12, 12)


def test_residual_block_keeps_shape_and_adds_identity() -> None:
    block = nets.ResidualBlock(16)
    for p in block.parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(2, 16, 4, 4)
    assert torch.equal(block(x), torch.relu(x))  # zero convs: y = relu(x + 0)


def test_char_rnn_state_in_and_out() -> None:
    net = get_spec("char-rnn").build(vocab_size=11, embed=10, hidden=8, layers=2)
    tokens = torch.randint(0, 11, (3, 5))
    logits, state = net(tokens, net.initial_state(3))
    assert logits.shape == (3, 5, 11) and state.shape == (2, 3, 8)
    # Feeding the sequence in two halves with the state carried gives the same logits.
    first, mid = net(tokens[:, :2], net.initial_state(3))
    second, _ = net(tokens[:, 2:], mid)
    assert torch.allclose(torch.cat([first, second], 1), logits, atol=1e-6)


def test_catalog_entries_are_complete() -> None:
    assert set(MODEL_NAMES) == {"diabetes", "mnist-fc", "mnist-cnn", "mnist-googlenet",
                                "mnist-resnet", "char-rnn"}
    for spec in CATALOG.values():
        assert {"quick", "full", "lecture"} <= set(spec.recipes)
        assert spec.inputs and spec.outputs and spec.preprocessing and spec.dataset
        assert spec.headline_metric
    with pytest.raises(UnknownModel, match="known models"):
        get_spec("mnist-vgg")
