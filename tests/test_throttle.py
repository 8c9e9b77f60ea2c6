"""The rolling-window limiter, against a real Redis, with time injected."""

import multiprocessing

import pytest
import redis

from pdauto.throttle import RollingLimiter

START = 1_767_600_000.0  # 2026-01-05 08:00:00 UTC
DAY = 86400


@pytest.fixture
def limiter(redis_client):
    return RollingLimiter(redis_client, "test:limit")


def reserve_many(limiter, subject, times):
    return [limiter.reserve(subject, now=moment) for moment in times]


def test_reserve_allows_five_in_window(limiter):
    results = reserve_many(limiter, "a", [START + i for i in range(5)])

    assert all(result.allowed for result in results)
    assert len({result.token for result in results}) == 5


def test_reserve_denies_sixth_in_window(limiter):
    reserve_many(limiter, "a", [START + i for i in range(5)])

    result = limiter.reserve("a", now=START + 10)

    assert result.allowed is False
    assert result.token is None
    assert result.retry_at == START + 300


def test_reserve_allows_once_window_slides(limiter):
    reserve_many(limiter, "a", [START + i for i in range(5)])

    just_before = limiter.reserve("a", now=START + 299.9)
    at_reopening = limiter.reserve("a", now=START + 300)

    assert just_before.allowed is False
    assert at_reopening.allowed is True


def test_denied_reservation_takes_no_slot(limiter):
    reserve_many(limiter, "a", [START + i for i in range(5)])
    reserve_many(limiter, "a", [START + 10 + i for i in range(20)])

    assert limiter.count("a", now=START + 60) == {300: 5, 86400: 5}


def test_burst_of_twenty_allows_five(limiter):
    results = reserve_many(limiter, "a", [START + 3 * i for i in range(20)])

    assert sum(result.allowed for result in results) == 5


def test_day_cap_over_simulated_day(limiter):
    minutes = [START + 60 * i for i in range(24 * 60)]

    results = reserve_many(limiter, "a", minutes)
    allowed_times = [t for t, result in zip(minutes, results, strict=True) if result.allowed]

    assert len(allowed_times) == 50
    # Five per five minutes until the cap: the 50th slot goes in the 10th window.
    assert allowed_times[-1] == START + 60 * 49


def test_day_cap_retry_time(limiter):
    minutes = [START + 60 * i for i in range(60)]
    reserve_many(limiter, "a", minutes)

    result = limiter.reserve("a", now=START + 3 * 3600)

    assert result.allowed is False
    assert result.retry_at == START + DAY


def test_day_cap_reopens_after_day(limiter):
    reserve_many(limiter, "a", [START + 60 * i for i in range(60)])

    result = limiter.reserve("a", now=START + DAY)

    assert result.allowed is True


def test_day_cap_holds_in_any_day(limiter):
    """Every 24-hour span of a simulated two days contains at most 50 reservations."""
    times = [START + 120 * i for i in range(2 * 24 * 30)]
    results = reserve_many(limiter, "a", times)
    allowed = [t for t, result in zip(times, results, strict=True) if result.allowed]

    worst = max(sum(1 for t in allowed if start <= t < start + DAY) for start in allowed)

    assert worst == 50
    assert len(allowed) == 100


def test_retry_at_waits_for_both_windows(redis_client):
    limiter = RollingLimiter(redis_client, "test:limit", windows=((2, 10), (3, 100)))
    reserve_many(limiter, "a", [START, START + 1, START + 20])

    result = limiter.reserve("a", now=START + 21)

    assert result.allowed is False
    assert result.retry_at == START + 100


def test_release_frees_slot(limiter):
    results = reserve_many(limiter, "a", [START + i for i in range(5)])

    limiter.release("a", results[2].token)
    after_release = limiter.reserve("a", now=START + 6)

    assert after_release.allowed is True


def test_count_per_window(limiter):
    reserve_many(limiter, "a", [START, START + 400, START + 500])

    assert limiter.count("a", now=START + 600) == {300: 2, 86400: 3}


def test_subjects_are_independent(limiter):
    reserve_many(limiter, "a", [START + i for i in range(5)])

    result = limiter.reserve("b", now=START + 6)

    assert result.allowed is True


def test_old_entries_are_dropped(limiter, redis_client):
    reserve_many(limiter, "a", [START + i for i in range(5)])

    limiter.reserve("a", now=START + DAY + 10)

    assert redis_client.zcard(limiter.key("a")) == 1


def test_key_expires_after_longest_window(limiter, redis_client):
    limiter.reserve("a", now=START)

    ttl_ms = redis_client.pttl(limiter.key("a"))

    assert 0 < ttl_ms <= DAY * 1000


def test_limiter_rejects_empty_windows(redis_client):
    with pytest.raises(ValueError, match="at least one"):
        RollingLimiter(redis_client, "test:limit", windows=())


def test_limiter_rejects_zero_limit(redis_client):
    with pytest.raises(ValueError, match="invalid window"):
        RollingLimiter(redis_client, "test:limit", windows=((0, 300),))


def reserve_in_process(url, start_barrier, results, attempts):
    """Reserve `attempts` times within one window, then report how many succeeded."""
    client = redis.Redis.from_url(url)
    limiter = RollingLimiter(client, "test:limit")
    start_barrier.wait(timeout=30)
    allowed = 0
    for i in range(attempts):
        allowed += limiter.reserve("shared", now=START + i * 0.01).allowed
    client.close()
    results.put(allowed)


def test_limit_holds_across_four_processes(redis_server, redis_client):
    context = multiprocessing.get_context("spawn")
    start_barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(
            target=reserve_in_process,
            args=(redis_server.url, start_barrier, results, 50),
        )
        for _ in range(4)
    ]
    for process in processes:
        process.start()

    allowed = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert sum(allowed) == 5
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
