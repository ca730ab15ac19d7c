"""models/textcodec.py: the one character codec of char-rnn. The same logits and seed give the
characters the served sampler gave before it moved here (golden strings recorded with
services/textgen.py at 937278d), and training's sample text is drawn by it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from models import textcodec

VOCAB = "\x00 abdeghilnos"  # id 0 is the unknown character
INDEX = {c: i for i, c in enumerate(VOCAB) if i}
# A fixed logits sequence, one row per step, from arithmetic only (no random stream).
LOGITS = (np.sin(np.arange(48 * len(VOCAB)).reshape(48, len(VOCAB)) * 0.7) * 4).astype(np.float32)
# (temperature, top_k, seed) → the characters textgen's _distribution + rng.choice drew at 937278d.
GOLDEN = {
    (0.8, None, 7): "oisidnbngbhbhdleogniahdgbleognhb dleadogbldlenen",
    (0.5, 3, 1): "bibldle gahoidie gagshdlele gohbielg gngsidielgo",
    (1.0, None, 0): "oha gnengsh lbldngag holelsshoibhelelhshohdienen",
    (1e-300, None, 3): "ohsidle gahbidle gahbhsidlengohsidle gahbidle ga",
}


def draw(temperature: float, top_k: int | None, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(VOCAB[textcodec.sample_next(row, rng, temperature, top_k)] for row in LOGITS)


@pytest.mark.parametrize(("settings", "expected"), GOLDEN.items(),
                         ids=[f"T{t:g}-top{k}-seed{seed}" for t, k, seed in GOLDEN])
def test_same_characters_as_the_served_sampler_before(settings: tuple, expected: str) -> None:
    assert draw(*settings) == expected


def test_distribution_never_gives_the_unknown_id_and_honours_top_k() -> None:
    logits = np.array([50.0, 1.0, 3.0, 2.0, -1.0], np.float32)  # the unknown id scores best
    probs = textcodec.distribution(logits, 1.0, None)
    assert probs[textcodec.UNKNOWN_ID] == 0 and probs.sum() == pytest.approx(1.0)
    top2 = textcodec.distribution(logits, 1.0, 2)
    assert set(np.flatnonzero(top2)) == {2, 3}
    # The shift comes before the division: a denormal temperature is argmax, never NaN.
    assert textcodec.distribution(logits, 1e-308, None).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_encode_text_maps_unknown_characters_to_zero() -> None:
    ids, unknown = textcodec.encode_text("big dog!?", INDEX)
    assert ids.dtype == np.int64 and ids.tolist() == [3, 8, 6, 1, 4, 11, 6, 0, 0]
    assert unknown == ["!", "?"]
    assert textcodec.encode_text("", INDEX)[0].shape == (0,)


class _FixedSteps:
    """A stand-in for the char-rnn module: each call returns the next row of LOGITS."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ids, state):
        import torch

        row = torch.from_numpy(LOGITS[self.calls % len(LOGITS)].copy())
        self.calls += 1
        return row.view(1, 1, -1).expand(1, ids.shape[1], -1), state

    def initial_state(self, batch: int):
        import torch

        return torch.zeros(1, batch, 2)

    def eval(self) -> None:
        pass

    def train(self) -> None:
        pass


@pytest.mark.parametrize("temperature", [0.8, 1e-300])
def test_training_sample_text_is_drawn_by_the_codec(monkeypatch: pytest.MonkeyPatch,
                                                    temperature: float) -> None:
    """TextTask.generate (the run's sample.txt and metrics "sample") goes through sample_next
    once per character and gives the served sampler's characters; at a denormal temperature too,
    where the sampler it had before divided first and drew from NaN."""
    from training.train import TextTask

    calls = []
    real = textcodec.sample_next
    monkeypatch.setattr(textcodec, "sample_next", lambda *a, **k: calls.append(a) or real(*a, **k))
    task = SimpleNamespace(module=_FixedSteps(), chars=VOCAB,
                           encode=lambda text: textcodec.encode_text(text, INDEX)[0])
    seed = 7 if temperature == 0.8 else 3
    text = TextTask.generate(task, "a dog", n=len(LOGITS), temperature=temperature, seed=seed)
    assert text == "a dog" + GOLDEN[(temperature, None, seed)]
    assert len(calls) == len(LOGITS)
