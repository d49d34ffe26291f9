"""The Engine on the tiny real model: generation, streaming, adapters, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine import AdapterLoadError, ChatMessage, Engine
from store.settings import Settings

MakeAdapter = Callable[[Path, int], Path]
QUESTION: list[ChatMessage] = [
    {"role": "system", "content": "You are a tiny bot."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture
def engine(tiny_settings: Settings) -> Engine:
    return Engine.from_settings(tiny_settings)


def greedy(engine: Engine, adapter: str | None = None) -> str:
    return engine.generate(QUESTION, adapter=adapter, temperature=0, max_new_tokens=16).text


def test_greedy_matches_plain_transformers_generate(engine: Engine, tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    inputs = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    expected = tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)

    completion = engine.generate(QUESTION, temperature=0, max_new_tokens=16)

    assert expected
    assert completion.text == expected
    assert completion.prompt_tokens == prompt_length
    assert completion.completion_tokens == output.shape[1] - prompt_length


def test_stream_pieces_join_to_the_generated_text(engine: Engine) -> None:
    stream = engine.stream(QUESTION, temperature=0, max_new_tokens=24)
    pieces = list(stream)
    assert len(pieces) > 1
    assert all(pieces)
    assert "".join(pieces) == stream.completion.text
    assert stream.completion.text == engine.generate(QUESTION, temperature=0, max_new_tokens=24).text


def test_completion_is_not_ready_before_the_stream_ends(engine: Engine) -> None:
    stream = engine.stream(QUESTION, temperature=0)
    with pytest.raises(RuntimeError, match="not finished"):
        _ = stream.completion
    list(stream)
    assert stream.completion.completion_tokens > 0


def test_completion_records_the_trimmed_prompt_and_sampling(engine: Engine) -> None:
    history: list[ChatMessage] = []
    for index in range(40):  # far more than the tiny model's 256-token context
        role = "user" if index % 2 == 0 else "assistant"
        history.append({"role": role, "content": f"turn {index}: my friend writes a short poem every day."})
    messages: list[ChatMessage] = [QUESTION[0], *history, QUESTION[1]]

    completion = engine.generate(messages, temperature=0.8, top_p=0.95, seed=7)

    assert completion.prompt_messages[0] == QUESTION[0]
    assert completion.prompt_messages[-1] == QUESTION[1]
    assert len(completion.prompt_messages) < len(messages)
    assert completion.prompt_tokens <= engine.context_tokens - 32
    assert completion.sampling.record() == {
        "max_new_tokens": 32,
        "temperature": 0.8,
        "top_p": 0.95,
        "repetition_penalty": engine.settings.repetition_penalty,
        "min_p": engine.settings.min_p,
        "seed": 7,
        "guidance": 1.0,
    }
    assert completion.adapter is None
    assert completion.finish_reason == ("length" if completion.completion_tokens == 32 else "stop")
    assert completion.latency_s > 0


def test_sampling_with_a_seed_is_reproducible(engine: Engine) -> None:
    first = engine.generate(QUESTION, temperature=1.0, seed=3).text
    assert engine.generate(QUESTION, temperature=1.0, seed=3).text == first
    assert {engine.generate(QUESTION, temperature=1.0, seed=seed).text for seed in range(4)} != {first}


def test_adapter_changes_the_answer_and_none_is_the_base_again(
    engine: Engine, make_tiny_adapter: MakeAdapter, tmp_path: Path
) -> None:
    base = greedy(engine)
    path = make_tiny_adapter(tmp_path / "v1", 1)

    engine.load_adapter("v1", path)

    assert engine.loaded_adapters == {"v1": path}
    tuned = engine.generate(QUESTION, adapter="v1", temperature=0, max_new_tokens=16)
    assert tuned.adapter == "v1"
    assert tuned.text != base
    assert greedy(engine, adapter=None) == base
    assert greedy(engine, adapter="v1") == tuned.text


def test_two_adapters_side_by_side_then_unloaded(
    engine: Engine, make_tiny_adapter: MakeAdapter, tmp_path: Path
) -> None:
    base = greedy(engine)
    engine.load_adapter("v1", make_tiny_adapter(tmp_path / "v1", 1))
    engine.load_adapter("v2", make_tiny_adapter(tmp_path / "v2", 2))
    first, second = greedy(engine, "v1"), greedy(engine, "v2")
    assert len({base, first, second}) == 3

    engine.unload_adapter("v1")
    with pytest.raises(ValueError, match="'v1' is not loaded"):
        greedy(engine, "v1")
    assert greedy(engine, "v2") == second

    engine.unload_adapter("v2")
    assert engine.loaded_adapters == {}
    assert not isinstance(engine.model, PeftModel)
    assert greedy(engine) == base


def test_unknown_adapter_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="'v7' is not loaded"):
        engine.generate(QUESTION, adapter="v7")
    with pytest.raises(ValueError, match="'v7' is not loaded"):
        engine.stream(QUESTION, adapter="v7")


def test_a_name_is_bound_to_one_folder(
    engine: Engine, make_tiny_adapter: MakeAdapter, tmp_path: Path
) -> None:
    path = make_tiny_adapter(tmp_path / "v1", 1)
    engine.load_adapter("v1", path)
    engine.load_adapter("v1", path)  # loading the same version again is a no-op
    with pytest.raises(ValueError, match="already loaded"):
        engine.load_adapter("v1", make_tiny_adapter(tmp_path / "other", 2))


def test_missing_adapter_folder_is_a_clear_error(engine: Engine, tmp_path: Path) -> None:
    base = greedy(engine)
    missing = tmp_path / "adapters" / "v9"
    with pytest.raises(AdapterLoadError, match=str(missing)):
        engine.load_adapter("v9", missing)
    assert engine.loaded_adapters == {}
    assert greedy(engine) == base


@pytest.mark.parametrize("already_serving_one", [False, True])
def test_corrupt_adapter_is_a_clear_error_and_changes_nothing(
    engine: Engine, make_tiny_adapter: MakeAdapter, tmp_path: Path, already_serving_one: bool
) -> None:
    if already_serving_one:
        engine.load_adapter("v1", make_tiny_adapter(tmp_path / "v1", 1))
    before = {None: greedy(engine), **{name: greedy(engine, name) for name in engine.loaded_adapters}}
    parameters = {name for name, _ in engine.model.named_parameters()}
    corrupt = make_tiny_adapter(tmp_path / "v2", 2)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")

    with pytest.raises(AdapterLoadError, match=str(corrupt)):
        engine.load_adapter("v2", corrupt)

    assert set(engine.loaded_adapters) == set(before) - {None}
    assert {name for name, _ in engine.model.named_parameters()} == parameters  # no half-loaded LoRA left
    assert {None: greedy(engine), **{name: greedy(engine, name) for name in engine.loaded_adapters}} == before
    engine.load_adapter("v3", make_tiny_adapter(tmp_path / "v3", 3))  # and a good one still loads
    assert greedy(engine, "v3") != before[None]


def test_adapter_unloaded_before_a_stream_runs_raises_instead_of_hanging(
    engine: Engine, make_tiny_adapter: MakeAdapter, tmp_path: Path
) -> None:
    engine.load_adapter("v1", make_tiny_adapter(tmp_path / "v1", 1))
    stream = engine.stream(QUESTION, adapter="v1")
    engine.unload_adapter("v1")
    with pytest.raises(ValueError, match="'v1' is not loaded"):
        list(stream)


def test_concurrent_callers_get_the_same_answers(
    engine: Engine, make_tiny_adapter: MakeAdapter, tmp_path: Path
) -> None:
    base = greedy(engine)
    path = make_tiny_adapter(tmp_path / "v1", 1)
    answers: list[str] = []

    def ask() -> None:
        answers.append(greedy(engine))
        answers.append("".join(engine.stream(QUESTION, temperature=0, max_new_tokens=16)))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    threads.append(threading.Thread(target=engine.load_adapter, args=("v1", path)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [base] * 8
    assert greedy(engine, "v1") != base


def test_sampling_is_validated_once_when_it_is_made(engine: Engine) -> None:
    from engine.engine import Sampling

    made = Sampling.resolve(engine.settings, temperature=0.0, seed=3)
    assert (made.temperature, made.seed, made.max_new_tokens) == (0.0, 3, engine.settings.max_new_tokens)
    for bad, message in (
        ({"max_new_tokens": 0}, "max_new_tokens must be positive"),
        ({"temperature": -0.1}, "temperature must be 0"),
        ({"top_p": 0.0}, "top_p must be in"),
    ):
        with pytest.raises(ValueError, match=message):
            Sampling.resolve(engine.settings, **bad)
