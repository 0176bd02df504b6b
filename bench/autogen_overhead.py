"""delib's and AutoGen's per-call overhead, side by side in one run against one server.

    pip install autogen-agentchat "autogen-ext[openai]"    # not a delib dependency
    python -m bench.autogen_overhead [--pairs N] [--delay S] [--no-stream]

AutoGen AgentChat's ``RoundRobinGroupChat`` of four ``AssistantAgent``s (one model client, as
delib shares one endpoint) runs as many model calls as delib's 41-turn debate; each framework
is then compared with a bare ``AsyncOpenAI`` loop replaying the very request bodies it sent
(``bench.overhead.bare_once``); delib twice: from its run being ready to its end, and end to
end as its manifest has it (``started_at`` to ``ended_at``: archive, checkpoints, graph,
verdict and final writes in it). Runs go delib, its replay, AutoGen, its replay, in turn, after
one round not counted; medians of the pairs' differences. AutoGen keeps its conversation in
memory only: nothing is written to disk, so the comparison is of orchestration with and
without a durable record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime

from bench.common import Stopwatch, fake_server, median, server_requests, temp_archive
from bench.overhead import SCENARIO, bare_once, debate_request, delib_once, middle_half
from delib.debate.runner import Run

PERSONAS = ("moderator", "philosopher", "oversight", "interpretability")


def _autogen_team(base_url: str, calls: int, stream: bool):
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.conditions import MaxMessageTermination
    from autogen_agentchat.teams import RoundRobinGroupChat
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    client = OpenAIChatCompletionClient(
        model="test-model",
        base_url=base_url,
        api_key="sk-bench",
        max_retries=0,
        model_info={
            "vision": False,
            "function_calling": False,
            "json_output": False,
            "structured_output": False,
            "family": "unknown",
        },
    )
    agents = [
        AssistantAgent(
            name,
            model_client=client,
            system_message=f"You are the {name} of a panel on how hard AI alignment is.",
            model_client_stream=stream,
        )
        for name in PERSONAS
    ]
    # The task is the first message; each model call adds one.
    team = RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(calls + 1))
    return team, client


async def autogen_once(base_url: str, calls: int, stream: bool) -> tuple[Stopwatch, list]:
    team, client = _autogen_team(base_url, calls, stream)
    try:
        server_requests(base_url, clear=True)
        with Stopwatch() as watch:
            async for _ in team.run_stream(task="How difficult is AI alignment? Debate it."):
                pass
    finally:
        await client.close()
    return watch, server_requests(base_url, clear=True)


def _seconds(manifest: dict) -> float:
    """A run's time as its manifest has it: ``started_at`` (its folder made) to ``ended_at``
    (its last write), so the archive, the checkpoints, the graph, the verdict and the final
    writes are all in it."""
    started = datetime.fromisoformat(manifest["started_at"])
    return (datetime.fromisoformat(manifest["ended_at"]) - started).total_seconds()


async def delib_end_to_end(base_url: str, stream: bool, archive) -> tuple[float, list]:
    run = Run(debate_request(base_url, 10, stream, archive, SCENARIO))
    try:
        async for message in run.stream():
            if message["kind"] == "ready":
                server_requests(base_url, clear=True)  # only the debate's own requests
    finally:
        await run.aclose()
    assert run.result is not None
    return _seconds(run.result.manifest), server_requests(base_url, clear=True)


async def measure(pairs: int, delay: float, stream: bool) -> dict:
    archive = temp_archive()
    diffs: dict[str, list[float]] = {"delib": [], "delib_end_to_end": [], "autogen": []}
    calls: dict[str, int] = {}
    with fake_server(delay=delay) as base_url:
        for n in range(pairs + 1):
            watch, _, bodies = await delib_once(base_url, 10, stream, archive, SCENARIO)
            bare = await bare_once(base_url, bodies)
            calls["delib"] = len(bodies)
            if n:
                diffs["delib"].append((watch.wall - bare.wall) / len(bodies) * 1000)
            seconds, bodies = await delib_end_to_end(base_url, stream, archive)
            bare = await bare_once(base_url, bodies)
            calls["delib_end_to_end"] = len(bodies)
            if n:
                diffs["delib_end_to_end"].append((seconds - bare.wall) / len(bodies) * 1000)
            ours, bodies = await autogen_once(base_url, calls["delib"], stream)
            bare = await bare_once(base_url, bodies)
            calls["autogen"] = len(bodies)
            if n:
                diffs["autogen"].append((ours.wall - bare.wall) / len(bodies) * 1000)
    rows = {}
    for name, values in diffs.items():
        rows[name] = {
            "calls": calls[name],
            "extra_ms_per_call": round(median(values), 2),
            "extra_ms_per_call_iqr": middle_half(values),
        }
    return {"reply_latency_s": delay, "stream": stream, "pairs": pairs, **rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--no-stream", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    result = asyncio.run(measure(args.pairs, args.delay, not args.no_stream))
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
