"""The OpenAI-compatible backend against a real vLLM (CPU build) serving the embedded SmolLM2.

Marked `vllm` (and `slow`): each needs the server in .vllm-venv that scripts/vllm-venv.sh prepares.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest

from engine.engine import AdapterLoadError
from engine.loading import EngineUnavailable
from engine.remote import RemoteServer, engine_name
from store.settings import Settings, load_settings
from tests.fixtures.vllm import MAX_LORA_RANK, VllmServer, save_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def remote_settings(tmp_path: Path, url: str, **model: object) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    return load_settings(
        env_file=None, data_dir=data_dir, model={"backend": "openai", "engine_url": url, **model}
    )


@pytest.fixture
async def remote(tmp_path: Path, vllm_server: VllmServer):
    if vllm_server.process is None:  # a test before this one killed it
        await asyncio.to_thread(vllm_server.start)
    settings = remote_settings(tmp_path, vllm_server.url, base_model=str(vllm_server.model_dir))
    async with RemoteServer(settings) as server:
        yield server


async def test_answers_stream_with_token_counts_and_stop(remote: RemoteServer) -> None:
    assert remote.runtime_adapters and remote.base_name == "smollm2"
    stream = remote.stream(CHAT, temperature=0, max_new_tokens=48)
    pieces = [piece async for piece in stream]
    completion = stream.completion
    assert len(pieces) > 3 and "".join(pieces) == completion.text and "Paris" in completion.text
    assert completion.adapter is None and completion.prompt_messages == CHAT
    assert completion.prompt_tokens > 10 and 0 < completion.completion_tokens <= 48
    cut = await remote.generate(CHAT, temperature=0, max_new_tokens=3)
    assert cut.finish_reason == "length" and cut.completion_tokens == 3

    # cancelling mid-answer frees the request (vLLM aborts it when the connection closes)
    long = remote.stream([{"role": "user", "content": "Tell a long story."}], max_new_tokens=400)
    async for _ in long:
        long.cancel()
        break
    await asyncio.sleep(0.5)
    assert remote.pending == 0
    with pytest.raises(RuntimeError, match="cancelled"):
        _ = long.completion


async def test_versions_go_live_by_name_with_no_failed_request_while_eight_stream(
    remote: RemoteServer, vllm_server: VllmServer, tmp_path: Path
) -> None:
    first = save_adapter(vllm_server.model_dir, tmp_path / "v1", seed=1)
    second = save_adapter(vllm_server.model_dir, tmp_path / "v2", seed=2)
    await remote.activate("v1", first)
    loop = asyncio.get_running_loop()
    swapped_at: list[float] = []

    async def conversation(i: int) -> list[str | None]:
        served = []
        for turn in range(3):
            completion = await remote.generate(
                [{"role": "user", "content": f"Question {i}.{turn}: name a colour."}], max_new_tokens=24
            )
            served.append(completion.adapter)
        return served

    async def swap() -> None:
        await asyncio.sleep(0.5)
        await remote.activate("v2", second)
        swapped_at.append(loop.time())

    results = await asyncio.gather(*(conversation(i) for i in range(8)), swap())
    served = [adapter for conversation_ in results[:8] for adapter in conversation_]
    assert len(served) == 24 and set(served) <= {"v1", "v2"}  # every request answered, none failed
    assert remote.active_adapter == "v2" and served.count("v2") >= 1
    listed = {model["id"] for model in await remote._models()}
    assert {engine_name("v1"), engine_name("v2")} <= listed

    # rollback: the previous version serves the next request at once, without loading anything
    await remote.activate("v1")
    assert (await remote.generate(CHAT, max_new_tokens=4)).adapter == "v1"


async def test_communities_are_served_their_own_versions_loaded_again_after_eviction(
    tmp_path: Path, vllm_server: VllmServer
) -> None:
    if vllm_server.process is None:
        await asyncio.to_thread(vllm_server.start)
    settings = remote_settings(
        tmp_path, vllm_server.url, base_model=str(vllm_server.model_dir), keep_adapters=2
    )
    scopes = {f"guild:{i}": f"s{i}" for i in range(1, 5)}  # four communities, two versions loaded at most
    async with RemoteServer(settings) as remote:
        for seed, (scope, name) in enumerate(scopes.items(), 20):
            await remote.activate(
                name, save_adapter(vllm_server.model_dir, tmp_path / name, seed=seed), scope=scope
            )
        assert set(remote.loaded_adapters) == {"s3", "s4"}  # s1 and s2 were unloaded past keep
        order = [scope for _ in range(4) for scope in scopes]

        completions = await asyncio.gather(
            *(remote.generate(CHAT, scope=scope, temperature=0, max_new_tokens=8) for scope in order)
        )
        base = await remote.generate(CHAT, scope="guild:9", temperature=0, max_new_tokens=8)

    # none failed, none mixed up: s1 and s2 were loaded into the engine again when their communities asked
    assert [c.adapter for c in completions] == [scopes[s] for s in order]
    assert base.adapter is None  # a community with no version of its own, and no global one: the base model


async def test_the_canary_share_holds_per_request(
    remote: RemoteServer, vllm_server: VllmServer, tmp_path: Path
) -> None:
    await remote.activate("c1", save_adapter(vllm_server.model_dir, tmp_path / "c1", seed=3))
    await remote.load_adapter("c2", save_adapter(vllm_server.model_dir, tmp_path / "c2", seed=4))
    remote.set_canary("c2", 0.3)
    completions = []
    for wave in range(8):  # 50 at a time: under MODEL_MAX_PENDING
        completions += await asyncio.gather(
            *(
                remote.generate(
                    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{wave}.{i}"}],
                    max_new_tokens=1,
                )
                for i in range(50)
            )
        )
    counts = collections.Counter(c.adapter for c in completions)
    assert set(counts) == {"c1", "c2"} and abs(counts["c2"] / 400 - 0.3) <= 0.08, counts


async def test_a_refused_adapter_leaves_the_previous_one_serving(
    remote: RemoteServer, vllm_server: VllmServer, tmp_path: Path
) -> None:
    await remote.activate("ok", save_adapter(vllm_server.model_dir, tmp_path / "ok", seed=5))
    too_big = save_adapter(vllm_server.model_dir, tmp_path / "big", seed=6, rank=2 * MAX_LORA_RANK)
    with pytest.raises(AdapterLoadError, match="refused adapter 'big'"):
        await remote.activate("big", too_big)
    with pytest.raises(AdapterLoadError, match="refused adapter 'missing'"):
        await remote.activate("missing", tmp_path / "nowhere")
    assert remote.active_adapter == "ok" and "big" not in remote.loaded_adapters
    assert (await remote.generate(CHAT, max_new_tokens=4)).adapter == "ok"


async def test_an_engine_killed_mid_answer_fails_that_answer_and_serving_recovers_when_it_returns(
    remote: RemoteServer, vllm_server: VllmServer, tmp_path: Path
) -> None:
    await remote.activate("r1", save_adapter(vllm_server.model_dir, tmp_path / "r1", seed=7))
    stream = remote.stream([{"role": "user", "content": "Tell a long story."}], max_new_tokens=400)
    with pytest.raises(EngineUnavailable):
        async for _ in stream:
            vllm_server.kill()
    with pytest.raises(EngineUnavailable):  # down: each request fails at once, nothing hangs
        await asyncio.wait_for(remote.generate(CHAT, max_new_tokens=4), timeout=10)
    await asyncio.to_thread(vllm_server.start)
    # the restarted engine lost its adapters: the first request loads the active one again
    completion = await remote.generate(CHAT, max_new_tokens=4)
    assert completion.adapter == "r1" and completion.completion_tokens == 4
