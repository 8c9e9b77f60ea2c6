"""A rolling-window limit kept in Redis, shared by every process that uses it.

Each subject (a recipient address, for instance) has one sorted set of
reservations scored by their time. One Lua script trims, counts and adds, so
concurrent callers in any number of processes never exceed a limit.
"""

import math
import time
import uuid
from typing import NamedTuple

# KEYS[1]: the subject's sorted set. ARGV: now, token. WINDOWS, LONGEST and
# LONGEST_MS are written in by _reserve_script, so a call sends two arguments.
# A reservation scored s is inside a window of w seconds at time t while
# s > t - w, so its slot frees at exactly s + w. Returns nil when the token was
# added, else the time at which every window has a free slot again.
RESERVE_SCRIPT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])

redis.call('ZREMRANGEBYSCORE', key, '-inf', now - LONGEST)

local retry_at = nil
for _, pair in ipairs(WINDOWS) do
    local limit, window = pair[1], pair[2]
    local start = '(' .. string.format('%.6f', now - window)
    local used = redis.call('ZCOUNT', key, start, '+inf')
    if used >= limit then
        -- The window reopens when the (used - limit + 1)-th oldest
        -- reservation inside it leaves.
        local entry = redis.call(
            'ZRANGEBYSCORE', key, start, '+inf', 'WITHSCORES',
            'LIMIT', used - limit, 1)
        local frees_at = tonumber(entry[2]) + window
        if retry_at == nil or frees_at > retry_at then
            retry_at = frees_at
        end
    end
end

if retry_at ~= nil then
    return string.format('%.6f', retry_at)
end

redis.call('ZADD', key, now, ARGV[2])
redis.call('PEXPIRE', key, LONGEST_MS)
return nil
"""


def _reserve_script(windows, longest):
    """Return RESERVE_SCRIPT with the windows written in as Lua constants."""
    pairs = ", ".join(f"{{{limit}, {float(seconds)!r}}}" for limit, seconds in windows)
    return (
        f"local WINDOWS = {{{pairs}}}\n"
        f"local LONGEST = {float(longest)!r}\n"
        f"local LONGEST_MS = {math.ceil(longest * 1000)}\n" + RESERVE_SCRIPT
    )


class Reservation(NamedTuple):
    """The outcome of RollingLimiter.reserve.

    `token` identifies the slot taken when `allowed`; `retry_at` is the Unix time
    at which every window has a free slot again when not `allowed`.
    """

    allowed: bool
    token: str | None
    retry_at: float | None


class RollingLimiter:
    """Allow at most `limit` reservations per subject in every rolling window.

    `windows` contains (limit, seconds) pairs. Each subject's key expires one
    longest window after its last reservation, so idle subjects leave no keys.
    """

    def __init__(
        self,
        redis_client,
        key_prefix: str,
        windows: tuple[tuple[int, float], ...] = ((5, 300), (50, 86400)),
    ):
        if not windows:
            raise ValueError("RollingLimiter needs at least one (limit, seconds) window")
        for limit, seconds in windows:
            if limit < 1 or seconds <= 0:
                raise ValueError(
                    f"invalid window ({limit}, {seconds}): the limit must be 1 or"
                    " more and the length more than 0 seconds"
                )

        self.redis = redis_client
        self.key_prefix = key_prefix
        self.windows = tuple((int(limit), seconds) for limit, seconds in windows)
        self.longest = max(seconds for _, seconds in self.windows)
        self._reserve = redis_client.register_script(_reserve_script(self.windows, self.longest))

    def key(self, subject: str) -> str:
        return f"{self.key_prefix}:{subject}"

    def reserve(self, subject: str, now: float | None = None) -> Reservation:
        """Take a slot for `subject` at `now` (Unix seconds) if every window allows."""
        now = time.time() if now is None else float(now)
        token = uuid.uuid4().hex
        retry_at = self._reserve(keys=[self.key(subject)], args=[repr(now), token])
        if retry_at is None:
            return Reservation(True, token, None)
        return Reservation(False, None, float(retry_at))

    def release(self, subject: str, token: str) -> None:
        """Free a slot whose use definitely failed, so it no longer counts."""
        self.redis.zrem(self.key(subject), token)

    def count(self, subject: str, now: float | None = None) -> dict[float, int]:
        """Return the reservations inside each window, keyed by window length."""
        now = time.time() if now is None else float(now)
        key = self.key(subject)
        pipeline = self.redis.pipeline(transaction=False)
        for _, seconds in self.windows:
            pipeline.zcount(key, f"({now - seconds!r}", "+inf")
        counts = pipeline.execute()
        return {seconds: used for (_, seconds), used in zip(self.windows, counts, strict=True)}
