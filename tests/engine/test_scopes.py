"""One base model, an adapter per community: each scope's ACTIVE requests get its own version, scopes share
batches, and versions past MODEL_KEEP_ADAPTERS are unloaded and loaded again when their scope asks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from engine import Engine
from engine.serving import ACTIVE, AdapterPlan, GenerationServer
from store.scopes import GLOBAL
from tests.fixtures.asking import QUESTIONS, ask, solo

A, B, C = "guild:1", "guild:2", "guild:3"


def test_a_scope_without_a_version_of_its_own_is_served_as_the_global_scope() -> None:
    plan = AdapterPlan(keep=3)
    plan.activate("g1")
    plan.activate("a1", A)

    assert plan.resolve(ACTIVE, A) == "a1"
    assert plan.resolve(ACTIVE, B) == "g1"  # nothing of its own: the global version
    assert plan.resolve("a1", B) == "a1"  # an explicit version is never redirected
    plan.set_canary("b1", 1.0, B)
    assert plan.resolve(ACTIVE, B) == "b1"  # a canary of its own serves its share, global the rest
    plan.set_canary("b1", 0.0, B)
    assert plan.resolve(ACTIVE, B) == "g1" and plan.scopes() == [GLOBAL, A]

    plan.activate(None, A)  # its version rolled back to none: the global version serves it again
    assert plan.resolve(ACTIVE, A) == "g1" and plan.scopes() == [GLOBAL]
    plan.activate(None)
    assert plan.resolve(ACTIVE, A) is None  # and the base model once the global scope has none


def test_eviction_spares_the_global_versions_and_those_decoding() -> None:
    plan = AdapterPlan(keep=2)
    plan.activate("g1")
    plan.activate("g2")  # g1 is the global previous, kept for a rollback
    for name, scope in (("a1", A), ("b1", B)):
        plan.loaded(name, Path(name))
        plan.activate(name, scope)
    plan.loaded("c1", Path("c1"))  # the newest: about to be activated

    assert plan.to_evict(["g1", "g2", "a1", "b1", "c1"], in_use={"a1"}) == ["b1"]
    assert plan.to_evict(["g1", "g2", "a1", "c1"], in_use=set()) == ["a1"]
    assert plan.path_of("a1") == Path("a1")  # forgotten as loaded, not as a folder: it can come back


async def test_scopes_share_a_batch_and_each_gets_its_own_answer(
    tiny_engine: Engine, tiny_adapters: dict[str, Path]
) -> None:
    async with GenerationServer(tiny_engine, max_batch=8) as server:
        await server.activate("v1", tiny_adapters["v1"])  # the global version
        await server.activate("v2", tiny_adapters["v2"], scope=A)
        await server.activate("v3", tiny_adapters["v3"], scope=B)
        scopes = [A, B, C, GLOBAL] * 2
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(scopes))]
        served = {A: "v2", B: "v3", C: "v1", GLOBAL: "v1"}
        expected = [solo(tiny_engine, q, served[s], 24) for q, s in zip(questions, scopes, strict=True)]

        completions = await asyncio.gather(
            *(
                server.generate(ask(q), scope=s, temperature=0, max_new_tokens=24)
                for q, s in zip(questions, scopes, strict=True)
            )
        )

    assert [c.adapter for c in completions] == [served[s] for s in scopes]
    assert [c.text for c in completions] == expected  # greedy: batched exactly as alone


async def test_evicted_versions_are_loaded_again_on_demand_under_load(
    tiny_engine: Engine,
    tiny_adapters: dict[str, Path],
    make_tiny_adapter: Callable[[Path, int], Path],
    tmp_path: Path,
) -> None:
    folders = {**tiny_adapters, "v4": make_tiny_adapter(tmp_path / "v4", 4)}
    scopes = {f"guild:{i}": f"v{i}" for i in range(1, 5)}  # four communities, each with its own version
    expected = {}
    for name in scopes.values():  # each version's answer alone, then the engine holds none
        tiny_engine.load_adapter(name, folders[name])
        expected[name] = solo(tiny_engine, QUESTIONS[0], name, 8)
        tiny_engine.unload_adapter(name)
    loads: list[str] = []
    load = tiny_engine.load_adapter

    def counting_load(name: str, path: Path) -> None:
        loads.append(name)
        load(name, path)

    tiny_engine.load_adapter = counting_load  # type: ignore[method-assign]
    async with GenerationServer(tiny_engine, max_batch=4, max_pending=256, keep_adapters=2) as server:
        for scope, name in scopes.items():
            await server.activate(name, folders[name], scope=scope)
        order = [scope for _ in range(6) for scope in scopes]

        completions = await asyncio.gather(
            *(server.generate(ask(QUESTIONS[0]), scope=s, temperature=0, max_new_tokens=8) for s in order)
        )
        await server.generate(ask(QUESTIONS[0]), max_new_tokens=1)  # a step after the drain evicts
        still_loaded = set(tiny_engine.loaded_adapters)

    assert [c.adapter for c in completions] == [scopes[s] for s in order]  # none failed, none mixed up
    assert [c.text for c in completions] == [expected[scopes[s]] for s in order]
    assert len(loads) > len(scopes)  # some versions were evicted and loaded again when asked for
    assert len(still_loaded) <= 2


async def test_a_version_whose_folder_vanished_falls_back_to_the_global_one(
    tiny_engine: Engine, make_tiny_adapter: Callable[[Path, int], Path], tmp_path: Path
) -> None:
    names = ("g1", "a1", "x1")
    folders = {name: make_tiny_adapter(tmp_path / name, seed) for seed, name in enumerate(names, 5)}
    async with GenerationServer(tiny_engine, max_batch=2, keep_adapters=2) as server:
        await server.activate("g1", folders["g1"])
        await server.activate("a1", folders["a1"], scope=A)
        await server.load_adapter("x1", folders["x1"])
        await server.generate(ask(QUESTIONS[0]), adapter="x1", max_new_tokens=1)  # evicts a1 between steps
        assert "a1" not in tiny_engine.loaded_adapters
        for file in folders["a1"].iterdir():
            file.unlink()

        completion = await server.generate(ask(QUESTIONS[0]), scope=A, max_new_tokens=4)
        again = await server.generate(ask(QUESTIONS[0]), scope=A, max_new_tokens=4)

    # its own version cannot come back: the community gets the global version's answer, not an error
    assert completion.adapter == again.adapter == "g1"
