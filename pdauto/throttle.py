"""A rolling-window limit kept in Redis, shared by every process that uses it.

Each subject (a recipient address, for instance) has one sorted set of
reservations scored by their time. One Lua script trims, counts and adds, so
concurrent callers in any number of processes never exceed a limit.
"""

import time
import uuid
from typing import NamedTuple

# KEYS[1]: the subject's sorted set. ARGV: now, token, the longest window, then
# (limit, window) pairs. A reservation scored s is inside a window of w seconds
# at time t while s > t - w, so its slot frees at exactly s + w.
RESERVE_SCRIPT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local token = ARGV[2]
local longest = tonumber(ARGV[3])

redis.call('ZREMRANGEBYSCORE', key, '-inf', now - longest)

local retry_at = nil
for i = 4, #ARGV, 2 do
    local limit = tonumber(ARGV[i])
    local window = tonumber(ARGV[i + 1])
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
    return {0, string.format('%.6f', retry_at)}
end

redis.call('ZADD', key, now, token)
redis.call('PEXPIRE', key, math.ceil(longest * 1000))
return {1, ''}
"""


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
        self._reserve = redis_client.register_script(RESERVE_SCRIPT)

    def key(self, subject: str) -> str:
        return f"{self.key_prefix}:{subject}"

    def reserve(self, subject: str, now: float | None = None) -> Reservation:
        """Take a slot for `subject` at `now` (Unix seconds) if every window allows."""
        now = time.time() if now is None else float(now)
        token = uuid.uuid4().hex
        arguments = [repr(now), token, repr(self.longest)]
        for limit, seconds in self.windows:
            arguments += [limit, repr(seconds)]

        allowed, retry_at = self._reserve(keys=[self.key(subject)], args=arguments)

        if allowed:
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
