"""GenerationServer on the tiny real model: batching, streaming, back-pressure, cancellation, adapters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
)

from engine import AdapterLoadError, ChatMessage, Engine, encode_prompt, scheduler
from engine.memory import glibc, malloc_trim
from engine.serving import ACTIVE, Busy, GenerationServer
from store.settings import Settings, load_settings
from tests.fixtures.asking import QUESTIONS, ask, solo


def answer_only_penalty(penalty: float, prompt_length: int) -> dict[str, Any]:
    """`generate` options for the engine's repetition penalty: over the answer's tokens, not the prompt's."""
    if penalty == 1.0:
        return {}
    processor = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=prompt_length)
    return {"repetition_penalty": penalty, "logits_processor": LogitsProcessorList([processor])}


async def test_greedy_matches_plain_transformers_generate(
    server: GenerationServer, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    inputs = tokenizer.apply_chat_template(
        ask(QUESTIONS[0]), add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    prompt_length = inputs["input_ids"].shape[1]
    penalty = answer_only_penalty(server.engine.settings.repetition_penalty, prompt_length)
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False, **penalty)

    completion = await server.generate(ask(QUESTIONS[0]), temperature=0, max_new_tokens=24)

    assert completion.text == tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)
    assert completion.completion_tokens == output.shape[1] - prompt_length
    assert completion.prompt_tokens == prompt_length
    assert completion.adapter is None


async def test_stream_pieces_join_to_the_completion(server: GenerationServer) -> None:
    stream = server.stream(ask(QUESTIONS[1]), temperature=0, max_new_tokens=24)
    pieces = [piece async for piece in stream]

    assert len(pieces) > 1
    assert all(pieces)
    assert "".join(pieces) == stream.completion.text
    assert (
        stream.completion.text
        == (await server.generate(ask(QUESTIONS[1]), temperature=0)).text[: len(stream.completion.text)]
    )
    assert stream.completion.sampling.record() == {
        "max_new_tokens": 24,
        "temperature": 0.0,
        "top_p": 0.9,
        "repetition_penalty": server.engine.settings.repetition_penalty,
        "min_p": server.engine.settings.min_p,
        "seed": None,
        "guidance": 1.0,
    }


async def test_concurrent_requests_each_get_their_own_solo_answer(
    server: GenerationServer, tiny_engine: Engine
) -> None:
    lengths = [24, 8, 17, 3, 24, 12, 1, 20]  # rows leave the batch at different steps
    expected = [solo(tiny_engine, q, max_new_tokens=n) for q, n in zip(QUESTIONS, lengths, strict=True)]

    streams = [
        server.stream(ask(q), temperature=0, max_new_tokens=n)
        for q, n in zip(QUESTIONS, lengths, strict=True)
    ]
    assert server.pending == len(QUESTIONS)
    texts = await asyncio.gather(*(collect(stream) for stream in streams))

    assert texts == expected
    assert len(set(expected)) > 4  # the prompts really differ
    assert server.pending == 0


async def test_prompts_that_arrive_together_prefill_in_one_pass(
    server: GenerationServer, tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = ["The cat likes homework.", "The dog likes homework.", "Hello, how are you?", "Why?"]
    expected = [solo(tiny_engine, q) for q in questions]
    passes = spy_on_prefill(monkeypatch)

    with server._scheduler._changed:  # the worker admits all four in one turn
        streams = [server.stream(ask(q), temperature=0, max_new_tokens=24) for q in questions]
    texts = await asyncio.gather(*(collect(stream) for stream in streams))

    assert texts == expected
    assert sorted(passes, reverse=True)[0] >= 3  # similar lengths share a pass
    assert sum(passes) == len(questions)


async def test_a_prompt_that_fails_in_a_shared_prefill_fails_alone(
    server: GenerationServer, tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = ["The cat likes homework.", "The dog likes homework.", "The cow likes homework."]
    expected = solo(tiny_engine, questions[0])
    poison = torch.tensor(encode_prompt(ask(questions[1]), tiny_engine.tokenizer))
    passes = spy_on_prefill(monkeypatch, fails=lambda prompt: torch.equal(prompt[0], poison))

    with server._scheduler._changed:
        streams = [server.stream(ask(q), temperature=0, max_new_tokens=24) for q in questions]
    first, failed, last = await asyncio.gather(*(collect(s) for s in streams), return_exceptions=True)

    assert first == expected
    assert isinstance(failed, RuntimeError) and "poisoned" in str(failed)
    assert isinstance(last, str) and last
    assert passes == [3, 1, 1, 1]  # the shared pass failed; each then went alone


def spy_on_prefill(monkeypatch: pytest.MonkeyPatch, fails: object = None) -> list[int]:
    """Record how many prompts each prefill pass is given; `fails(prompt)` makes a pass holding it raise."""
    passes: list[int] = []
    original = scheduler.DecodeBatch.prefill

    def prefill(self: object, model: object, router: object, prompts: list[torch.Tensor], *rest: object):  # type: ignore[no-untyped-def]
        passes.append(len(prompts))
        if callable(fails) and any(fails(prompt) for prompt in prompts):
            raise RuntimeError("poisoned prompt")
        return original(self, model, router, prompts, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler.DecodeBatch, "prefill", prefill)
    return passes


async def collect(stream: object) -> str:
    pieces = [piece async for piece in stream]  # type: ignore[attr-defined]
    return "".join(pieces)


async def test_the_repetition_penalty_decodes_as_plain_generate_does(
    tiny_settings: Settings, tiny_model_dir: Path
) -> None:
    """In the batch and in `Engine.generate` alike: transformers' penalty over the answer's tokens only."""
    model_settings = tiny_settings.model.model_copy(update={"repetition_penalty": 1.5})
    engine = Engine.from_settings(tiny_settings.model_copy(update={"model": model_settings}))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def plain(question: str, penalty: float) -> str:
        input_ids = torch.tensor([encode_prompt(ask(question), engine.tokenizer)])
        options = answer_only_penalty(penalty, input_ids.shape[1])
        output = model.generate(input_ids=input_ids, max_new_tokens=24, do_sample=False, **options)
        text = engine.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one string out
        return text

    expected = [plain(question, 1.5) for question in QUESTIONS[:4]]
    async with GenerationServer(engine, max_batch=4) as server:
        batched = await asyncio.gather(
            *(server.generate(ask(q), temperature=0, max_new_tokens=24) for q in QUESTIONS[:4])
        )

    assert expected != [plain(question, 1.0) for question in QUESTIONS[:4]]  # the penalty changes answers
    assert [completion.text for completion in batched] == expected
    assert [solo(engine, question) for question in QUESTIONS[:4]] == expected
    assert batched[0].sampling.repetition_penalty == 1.5


def with_note(question: str) -> list[ChatMessage]:
    return ask(f"Note: the cat likes a short poem every day.\n\nQuestion: {question}")


async def test_guided_decoding_matches_transformers_classifier_free_guidance(
    server: GenerationServer, tiny_engine: Engine, tiny_model_dir: Path
) -> None:
    """Context-aware decoding in the batch as in `generate` with transformers' own guidance_scale: each guided
    request decodes a second, note-less row beside it, fed its tokens, and leaves with it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = tiny_engine.tokenizer
    penalty = tiny_engine.settings.repetition_penalty

    def plain(question: str, scale: float, max_new_tokens: int) -> str:
        input_ids = torch.tensor([encode_prompt(with_note(question), tokenizer)])
        options = answer_only_penalty(penalty, input_ids.shape[1])
        if scale != 1.0:
            unguided = torch.tensor([encode_prompt(ask(question), tokenizer)])
            options.update(guidance_scale=scale, negative_prompt_ids=unguided)
        output = model.generate(
            input_ids=input_ids, max_new_tokens=max_new_tokens, do_sample=False, **options
        )
        text = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one string out
        return text

    scales, lengths = [2.0, 1.0, 3.0, 2.0, 1.0, 1.5], [24, 24, 9, 17, 5, 24]  # rows leave at different steps
    asked = list(zip(QUESTIONS[:6], scales, lengths, strict=True))
    expected = [plain(q, scale, n) for q, scale, n in asked]
    assert expected != [plain(q, 1.0, n) for q, _, n in asked]  # guidance changes answers

    solo_guided = tiny_engine.generate(
        with_note(QUESTIONS[0]), temperature=0, max_new_tokens=24, guidance=2.0, unguided=ask(QUESTIONS[0])
    )
    batched = await asyncio.gather(
        *(
            server.generate(with_note(q), temperature=0, max_new_tokens=n, guidance=scale, unguided=ask(q))
            for q, scale, n in asked
        )
    )

    assert solo_guided.text == expected[0]
    assert [completion.text for completion in batched] == expected
    assert [completion.sampling.guidance for completion in batched] == scales
    assert server.pending == 0


async def test_guidance_without_the_unguided_conversation_is_refused(server: GenerationServer) -> None:
    with pytest.raises(ValueError, match="unguided"):
        server.stream(with_note(QUESTIONS[0]), guidance=1.5)
    with pytest.raises(ValueError, match="guidance must be in"):
        server.stream(with_note(QUESTIONS[0]), guidance=0.5, unguided=ask(QUESTIONS[0]))
    assert server.pending == 0


async def test_sampling_follows_each_request_seed(server: GenerationServer) -> None:
    async def sample(seed: int) -> str:
        return (await server.generate(ask(QUESTIONS[0]), temperature=1.0, top_p=0.95, seed=seed)).text

    first, again, *others = await asyncio.gather(sample(3), sample(3), sample(4), sample(5), sample(6))

    assert first == again
    assert set(others) != {first}


async def test_mixed_adapters_decode_in_one_batch(
    server: GenerationServer, tiny_engine: Engine, tiny_adapters: dict[str, Path]
) -> None:
    await server.load_adapter("v1", tiny_adapters["v1"])
    await server.load_adapter("v2", tiny_adapters["v2"])
    adapters = [None, "v1", "v2", "v1"]
    expected = [solo(tiny_engine, QUESTIONS[0], adapter) for adapter in adapters]
    assert len(set(expected)) == 3

    completions = await asyncio.gather(
        *(server.generate(ask(QUESTIONS[0]), adapter=a, temperature=0, max_new_tokens=24) for a in adapters)
    )

    assert [c.text for c in completions] == expected
    assert [c.adapter for c in completions] == adapters


async def test_swap_during_streaming_loses_and_mixes_nothing(
    server: GenerationServer, tiny_engine: Engine, tiny_adapters: dict[str, Path]
) -> None:
    await server.activate("v1", tiny_adapters["v1"])
    await server.load_adapter("v2", tiny_adapters["v2"])
    expected = {(q, a): solo(tiny_engine, q, a, 32) for q in QUESTIONS for a in ("v1", "v2")}
    streams = [server.stream(ask(q), temperature=0, max_new_tokens=32) for q in QUESTIONS]

    async def swap_after_first_piece() -> None:
        await anext(streams[0])
        await server.activate("v2")

    texts = await asyncio.gather(*(collect(stream) for stream in streams), swap_after_first_piece())
    first_piece = texts[0]  # streams[0] lost its first piece to the swapper; compare completions instead
    del first_piece

    completions = [stream.completion for stream in streams]
    assert {c.adapter for c in completions} == {"v1", "v2"}  # the first batch kept v1, the queued ones got v2
    for question, completion in zip(QUESTIONS, completions, strict=True):
        assert completion.text == expected[(question, completion.adapter)]
    assert server.active_adapter == "v2"
    assert (await server.generate(ask(QUESTIONS[0]), temperature=0, max_new_tokens=32)).adapter == "v2"


async def test_rollback_is_instant_and_old_versions_are_unloaded(
    tiny_engine: Engine, tiny_adapters: dict[str, Path]
) -> None:
    async with GenerationServer(tiny_engine, keep_adapters=2) as server:
        for name in ("v1", "v2", "v3"):
            await server.activate(name, tiny_adapters[name])
        await server.generate(ask(QUESTIONS[0]), max_new_tokens=2)  # eviction happens between steps

        assert set(tiny_engine.loaded_adapters) == {"v2", "v3"}
        await server.activate("v2")  # rollback: already loaded, no path needed
        assert (await server.generate(ask(QUESTIONS[0]), max_new_tokens=2)).adapter == "v2"
        await server.activate(None)
        assert (await server.generate(ask(QUESTIONS[0]), max_new_tokens=2)).adapter is None


async def test_canary_serves_its_share_of_active_requests(
    tiny_engine: Engine, tiny_adapters: dict[str, Path]
) -> None:
    async with GenerationServer(tiny_engine, max_batch=16, max_pending=400) as server:
        await server.activate("v1", tiny_adapters["v1"])
        await server.load_adapter("v2", tiny_adapters["v2"])
        server.set_canary("v2", 0.25)

        completions = await asyncio.gather(
            *(server.generate(ask(QUESTIONS[0]), max_new_tokens=1) for _ in range(400))
        )
        pinned = await server.generate(ask(QUESTIONS[0]), adapter="v1", max_new_tokens=1)

    share = sum(c.adapter == "v2" for c in completions) / len(completions)
    assert 0.17 < share < 0.33  # 0.25 +- 3.7 standard deviations of a binomial over 400
    assert {c.adapter for c in completions} == {"v1", "v2"}
    assert pinned.adapter == "v1"  # an explicit adapter is never redirected to the canary


async def test_corrupt_adapter_is_refused_and_the_active_keeps_serving(
    server: GenerationServer, tiny_engine: Engine, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    await server.activate("v1", tiny_adapters["v1"])
    before = await server.generate(ask(QUESTIONS[0]), temperature=0)
    corrupt = tmp_path / "v9"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": "not a number"}))
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00garbage")

    with pytest.raises(AdapterLoadError, match="v9"):
        await server.activate("v9", corrupt)
    with pytest.raises(AdapterLoadError, match="no adapter_config\\.json"):
        await server.load_adapter("v8", tmp_path / "missing")

    assert server.active_adapter == "v1"
    assert set(tiny_engine.loaded_adapters) == {"v1"}
    after = await server.generate(ask(QUESTIONS[0]), temperature=0)
    assert (after.adapter, after.text) == ("v1", before.text)


async def test_a_full_queue_answers_busy_at_once(tiny_engine: Engine) -> None:
    async with GenerationServer(tiny_engine, max_batch=1, max_pending=2) as server:
        streams = [server.stream(ask(q), max_new_tokens=32) for q in QUESTIONS[:2]]
        with pytest.raises(Busy, match=r"busy, try again in [\d.]+ s") as busy:
            server.stream(ask(QUESTIONS[2]))
        assert busy.value.retry_after_s >= 1
        assert server.pending == 2
        for stream in streams:
            stream.cancel()


async def test_cancel_frees_the_slot_whether_queued_or_decoding(tiny_engine: Engine) -> None:
    async with GenerationServer(tiny_engine, max_batch=1, max_pending=3) as server:
        decoding = server.stream(ask(QUESTIONS[0]), max_new_tokens=200, temperature=0)
        queued = server.stream(ask(QUESTIONS[1]), max_new_tokens=200)
        last = server.stream(ask(QUESTIONS[2]), max_new_tokens=4, temperature=0)
        await anext(decoding)
        assert (decoding.queue_position(), queued.queue_position(), last.queue_position()) == (0, 1, 2)

        queued.cancel()
        assert server.pending == 2
        assert last.queue_position() == 1
        async with decoding:
            pass  # leaving the block unfinished cancels it

        assert [piece async for piece in queued] == []
        with pytest.raises(RuntimeError, match="cancelled"):
            _ = queued.completion
        assert (await collect(last)) == solo(tiny_engine, QUESTIONS[2], max_new_tokens=4)
        assert server.pending == 0


async def test_bad_requests_fail_alone(server: GenerationServer) -> None:
    with pytest.raises(ValueError, match="'v7' is not loaded"):
        server.stream(ask(QUESTIONS[0]), adapter="v7")
    empty = server.stream([], max_new_tokens=4)
    good = server.stream(ask(QUESTIONS[0]), adapter=ACTIVE, max_new_tokens=4)

    with pytest.raises(ValueError, match="empty conversation"):
        await collect(empty)
    assert (await collect(good)) == good.completion.text


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
async def test_smollm2_greedy_matches_plain_generate(tmp_path: Path, dtype: str) -> None:
    """Alone, in either dtype, exactly `generate`'s answer. Batched, in float32: in bfloat16 the matrix
    kernels round a row differently with other rows beside it, so a near-tie can go the other way (as in any
    engine without batch-invariant kernels)."""
    settings = load_settings(env_file=None, data_dir=tmp_path, model={"device": "cpu", "dtype": dtype})
    engine = Engine.from_settings(settings)
    questions = ["What is the capital of France?", "Write a haiku about rain.", "Name three colours."]
    expected = []
    for question in questions:
        input_ids = torch.tensor([encode_prompt(ask(question), engine.tokenizer)])
        penalty = answer_only_penalty(settings.model.repetition_penalty, input_ids.shape[1])
        output = engine.model.generate(input_ids=input_ids, max_new_tokens=24, do_sample=False, **penalty)
        expected.append(engine.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True))

    async with GenerationServer(engine) as server:
        alone = [await server.generate(ask(q), temperature=0, max_new_tokens=24) for q in questions]
        assert [c.text for c in alone] == expected
        if dtype == "float32":
            batched = await asyncio.gather(
                *(server.generate(ask(q), temperature=0, max_new_tokens=24) for q in questions)
            )
            assert [c.text for c in batched] == expected
    assert "Paris" in expected[0]


async def test_freed_memory_goes_back_when_the_batch_drains(
    tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(scheduler, "TRIM_EVERY_S", 0.0)
    monkeypatch.setattr(scheduler, "malloc_trim", lambda: trims.append(server.pending))
    async with GenerationServer(tiny_engine) as server:
        await asyncio.gather(*(server.generate(ask(q), max_new_tokens=4) for q in QUESTIONS[:3]))
        for _ in range(100):
            if trims:
                break
            await asyncio.sleep(0.01)
    assert trims and set(trims) == {0}  # only once nothing was decoding
    malloc_trim()  # and the real call is harmless here


@pytest.mark.skipif(glibc() is None, reason="glibc's allocator only")
def test_tune_malloc_sets_glibc_up_unless_the_environment_did() -> None:
    def tuned(**environment: str) -> dict[str, int]:
        code = "import json; from engine.memory import tune_malloc; print(json.dumps(tune_malloc()))"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | environment
        output = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        return json.loads(output.splitlines()[-1])

    assert tuned() == {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 512 * 1024}
    assert tuned(MALLOC_ARENA_MAX="8") == {"MALLOC_MMAP_THRESHOLD_": 512 * 1024}
