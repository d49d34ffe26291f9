"""The per-person rate limit and the per-channel slots: what they allow, and that they forget idle people."""

from __future__ import annotations

import time

from bot.access import ChannelSlots, UserRateLimit


def test_rate_limit_counts_asks_in_a_sliding_window() -> None:
    limit = UserRateLimit(limit=2, window_s=0.2)
    assert limit.retry_after(1) == 0 and limit.retry_after(1) == 0
    wait = limit.retry_after(1)
    assert 0 < wait <= 0.2
    assert limit.first_refusal(1) and not limit.first_refusal(1)  # warned once per refusal spell
    assert limit.retry_after(2) == 0  # everyone has their own allowance
    time.sleep(0.25)
    assert limit.retry_after(1) == 0


def test_rate_limit_forgets_people_whose_asks_left_the_window() -> None:
    limit = UserRateLimit(limit=3, window_s=0.1)
    for user in range(1000):
        limit.retry_after(user)
    assert limit.tracked_users == 1000
    time.sleep(0.15)
    limit.retry_after(5000)
    assert limit.tracked_users == 1  # a busy server's passers-by are not kept forever


def test_channel_slots_hold_only_channels_answering_now() -> None:
    slots = ChannelSlots(per_channel=1)
    with slots.take(7) as first, slots.take(7) as second, slots.take(8) as other:
        assert first and not second and other
        assert slots.answering == 2
    assert slots.answering == 0
    with slots.take(7) as again:
        assert again
