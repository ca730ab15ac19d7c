"""char-rnn generation is reproducible under load (issue 15): a generation with seed s returns
exactly the same text alone and among 31 concurrent ones, whose steps share its batches.

Concurrent generations are batched step by step, so the model computes each sequence inside
batches of different sizes; a batch-size-dependent result (or state mixed up between the
sequences of one batch) would change the sampled characters. A real server (conftest's
``server``) over the tiny store."""

from __future__ import annotations

import threading

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.launch import Server

CHARS = 120  # long enough for the 32 generations to overlap for many steps
PROMPTS = ["In the beginning", "And God said", "The LORD is my shepherd", "Jesus wept", "Amen",
           "Blessed are the meek: for they shall inherit the earth", "Let there be light", "A"]
TARGET = 16  # the generation watched: in the middle of the crowd, not first to arrive


def bodies() -> list[dict[str, object]]:
    """32 generations, different prompts (and so lengths) and seeds; temperature 1 samples from
    the whole distribution, where the smallest change in the logits shows."""
    return [{"prompt": PROMPTS[i % len(PROMPTS)], "seed": 1000 + 7 * i, "max_new_chars": CHARS,
             "temperature": 1.0} for i in range(32)]


def generate(client: httpx.Client, body: dict[str, object]) -> str:
    response = client.post("/v1/models/char-rnn/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()["text"]


def char_rnn_counts(metrics_text: str) -> tuple[float, float]:
    """(items inferred, model executions) of char-rnn, summed over every label set."""
    totals = {"podium_inference_items": 0.0, "podium_inference_executions": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        if family.name in totals:
            totals[family.name] += sum(s.value for s in family.samples
                                       if s.labels.get("model") == "char-rnn"
                                       and s.name.endswith("_total"))
    return totals["podium_inference_items"], totals["podium_inference_executions"]


def test_a_seeded_generation_is_the_same_alone_and_among_31_concurrent_ones(server: Server) -> None:
    requests = bodies()
    with server.client() as client:
        alone = [generate(client, body) for body in requests]  # one at a time: batches of 1
        assert generate(client, requests[TARGET]) == alone[TARGET]
        before = char_rnn_counts(client.get("/metrics").text)

        crowd: list[str | None] = [None] * len(requests)
        start = threading.Barrier(len(requests))

        def run(i: int) -> None:
            with httpx.Client(base_url=server.url, timeout=120) as own:
                start.wait(timeout=60)
                crowd[i] = generate(own, requests[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a generation did not finish in 120 s"
        after = char_rnn_counts(client.get("/metrics").text)

    items, runs = after[0] - before[0], after[1] - before[1]
    # One prompt step and CHARS - 1 character steps each (the step after the last character
    # would go unused: the generation loop does not run it).
    assert items == len(requests) * CHARS
    assert runs < items / 4, f"the generations barely shared batches ({items:.0f} steps in {runs:.0f} runs)"
    assert crowd[TARGET] == alone[TARGET]
    assert len(alone[TARGET]) == CHARS
    differing = [i for i in range(len(requests)) if crowd[i] != alone[i]]
    assert not differing, f"generations {differing} changed when run concurrently"
    assert len(set(alone)) > len(requests) // 2, "different seeds should give different texts"
