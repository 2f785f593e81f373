"""Routing micro-batched across concurrent requests decides exactly as each request routed alone:
the default registry's real router and encoder (onnx-int8), through the pipeline's Route stage.

Why it matters: a server batches whoever is in flight, so if a decision moved with its batch-mates
the same prompt would go to different experts depending on the load."""

from __future__ import annotations

import asyncio
import itertools

from coe import CoE, load_config
from coe.pipeline.flow import Flow
from coe.pipeline.stages import Route
from coe.types import Message, Request
from tests.support.paths import DEFAULT_REGISTRY

SUBJECTS = [
    "a linked list", "prime numbers", "the French revolution", "a dragon", "compound interest",
    "a SQL join", "the area of a triangle", "sleeping better", "a REST API", "the speed of light",
    "a birthday party", "quicksort", "fractions", "a job interview", "regular expressions",
]  # fmt: skip
TEMPLATES = [
    "Write a Python function about {}.",
    "Explain {} to a ten-year-old.",
    "What is the probability question behind {}?",
    "Tell me a short story about {}.",
    "How do I compute {} step by step?",
    "Give me three tips about {}.",
    "{}",
    "Fix the bug in my JavaScript code for {}.",
]


def prompts() -> list[str]:
    return [t.format(s) for t, s in itertools.product(TEMPLATES, SUBJECTS)]  # 120 prompts


def decision_of(flow: Flow) -> tuple[object, ...]:
    d = flow.routed()
    return (d.router, tuple(d.experts), d.category, round(d.confidence or 0.0, 6), d.reason)


async def test_batched_routing_decides_as_each_prompt_alone() -> None:
    coe = CoE(load_config(DEFAULT_REGISTRY))
    route = coe.pipeline.stages[2]
    assert isinstance(route, Route)
    texts = prompts()

    alone = []
    for text in texts:  # one at a time: every batch has one request
        flow = Flow(Request(messages=[Message(role="user", content=text)]))
        await route.run([flow])
        alone.append(decision_of(flow))
    batcher = route._batcher(coe.router)
    assert batcher.largest == 1

    flows = [Flow(Request(messages=[Message(role="user", content=t)])) for t in texts]
    await asyncio.gather(*(route.run([flow]) for flow in flows))  # all in flight at once
    assert batcher.largest > 8, "the concurrent requests were not batched"
    assert [decision_of(f) for f in flows] == alone
    assert len({d[2] for d in alone}) >= 3  # the prompts span the categories (and the fallback)
    await coe.aclose()
