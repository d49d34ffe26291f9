"""Faults: a registered adapter that cannot serve (another base model, a missing file, another rank, garbage).

Each is refused at load with a message that names the problem, and the bot keeps answering with the version
it had, whether an admin asked for the broken one (/activate) or the registry moved to it (hot swap).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from sim.discord_emulator import DiscordEmulator
from store import crud, registry
from store.models import AdapterVersion, Generation
from store.settings import Settings
from tests.fixtures.bot import rows, until
from tests.fixtures.discord import Community, answer_to, slash


def other_base_adapter(folder: Path, tiny_model_dir: Path) -> None:
    """A real LoRA adapter, for a model like the tiny one but with hidden size 32 instead of 64."""
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 32, 64
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    get_peft_model(LlamaForCausalLM(config), lora).save_pretrained(folder)


def remove_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()


def claim_another_rank(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 8  # the weights were saved with r=4
    (folder / "adapter_config.json").write_text(json.dumps(config))


def write_garbage(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")


# damage done after registration (the registry refuses an incomplete folder, so it was whole then)
DAMAGE: dict[str, Callable[[Path], None]] = {
    "missing file": remove_weights,
    "wrong rank": claim_another_rank,
    "garbage safetensors": write_garbage,
}
EXPECTED = {
    "wrong base model": "it was trained for a different base model: its model.layers.0.self_attn.q_proj "
    "weights are [4, 32], this model needs [4, 64]",
    "missing file": "has no adapter_model.safetensors (missing or incomplete)",
    "wrong rank": "its weights have LoRA rank 4 but its adapter_config.json says r=8",
    "garbage safetensors": "adapter_model.safetensors is damaged or not a safetensors file",
}


def register(database, settings: Settings, make: Callable[[Path], object], *, active: bool) -> AdapterVersion:
    """Play the trainer: reserve a name, save an adapter into staging, move it into the registry."""
    name = rows(database, lambda s: registry.next_version_name(session=s))
    staging = registry.staging_dir(settings.adapters_dir)
    make(staging)
    return rows(
        database,
        lambda s: registry.register_adapter(
            session=s,
            name=name,
            staging=staging,
            adapters_dir=settings.adapters_dir,
            base_model="tiny",
            method="sft",
            status="active" if active else "candidate",
        ),
    )


async def ask(emulator: DiscordEmulator, community: Community, database, text: str) -> Generation:
    question = await emulator.send_message(community.general, community.alice, text, mentions_bot=True)
    answer = await answer_to(emulator, community, question)
    return await until(
        lambda: rows(database, lambda s: crud.generation_for_discord_message(session=s, discord_id=answer.id))
    )


@pytest.mark.parametrize("kind", list(EXPECTED))
async def test_a_broken_adapter_is_refused_by_name_and_the_old_one_keeps_serving(
    emulator: DiscordEmulator,
    community: Community,
    make_bot,
    database,
    bot_settings: Settings,
    make_tiny_adapter,
    tiny_model_dir: Path,
    kind: str,
) -> None:
    bot = await make_bot()
    good = register(database, bot_settings, lambda folder: make_tiny_adapter(folder, 1), active=True)
    await until(lambda: bot.services.server.active_adapter == good.name)
    before = await ask(emulator, community, database, "what is the capital of France?")
    if kind == "wrong base model":
        broken = register(
            database, bot_settings, lambda f: other_base_adapter(f, tiny_model_dir), active=False
        )
    else:
        broken = register(database, bot_settings, lambda f: make_tiny_adapter(f, 2), active=False)
        DAMAGE[kind](Path(broken.path or ""))

    # an admin asks for it
    [answer] = await slash(emulator, community, community.alice, "activate", {"version": broken.name})
    assert EXPECTED[kind] in answer.content and broken.name in answer.content
    assert f"Still answering with {good.name}" in answer.content
    assert rows(database, lambda s: registry.active_version(session=s)).name == good.name

    # the registry itself moves to it (another process activated it): the hot swap refuses it too
    rows(database, lambda s: registry.activate(session=s, name=broken.name))
    swap = bot.get_cog("AdapterSwap")
    failed = await until(lambda: swap.failed())
    assert failed[0] == broken.name and EXPECTED[kind] in failed[1]
    marked = await until(  # the registry row says why, and /adapters shows it
        lambda: rows(database, lambda s: registry.get_version(session=s, name=broken.name)).metrics.get(
            "serve_error"
        )
    )
    assert EXPECTED[kind] in marked
    [listed] = await slash(emulator, community, community.alice, "adapters")
    assert "could not be served" in listed.content and EXPECTED[kind][:30] in listed.content

    assert bot.services.server.active_adapter == good.name
    assert broken.name not in bot.services.server.engine.loaded_adapters
    after = await ask(emulator, community, database, "what is the capital of France?")
    assert (after.adapter_version, after.completion) == (good.name, before.completion)  # served as before
