//! The server-side scripts: each runs atomically in Redis (EVALSHA, reloaded by the client
//! after a restart of Redis), on keys of one hash slot. Time is Redis's own (`TIME`), so the
//! instances' clocks never need to agree.

use once_cell::sync::Lazy;
use redis::Script;

/// Reserve budget in the key's current window, and add tokens charged since the last call.
/// KEYS[1]: the window hash. ARGV: window ms, requests wanted, rpm (0: none), tokens to add.
/// Returns {granted, requests counted, tokens counted, ms left in the window, window start}.
/// The window starts at the first call after the previous one ended (like the local limiter).
pub static RESERVE: Lazy<Script> = Lazy::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = tonumber(ARGV[1])
local w = redis.call('HMGET', KEYS[1], 's', 'r', 't')
local s, r, tk = tonumber(w[1]), tonumber(w[2]) or 0, tonumber(w[3]) or 0
if not s or now >= s + len then s = now; r = 0; tk = 0 end
local want, rpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local g = want
if rpm > 0 then g = math.max(0, math.min(want, rpm - r)) end
r = r + g
tk = tk + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 's', s, 'r', r, 't', tk)
redis.call('PEXPIRE', KEYS[1], len * 2)
return {g, r, tk, s + len - now, s}
",
    )
});

/// Give back requests reserved but not spent, if their window is still the current one.
/// KEYS[1]: the window hash. ARGV: window start, requests.
pub static RETURN: Lazy<Script> = Lazy::new(|| {
    Script::new(
        r"
local s = redis.call('HGET', KEYS[1], 's')
if s and tonumber(s) == tonumber(ARGV[1]) then
  local r = tonumber(redis.call('HGET', KEYS[1], 'r')) or 0
  redis.call('HSET', KEYS[1], 'r', math.max(0, r - tonumber(ARGV[2])))
  return 1
end
return 0
",
    )
});

/// Take a concurrency slot: a lease id in a sorted set scored by its expiry. Expired leases
/// (of a crashed instance) are dropped first. KEYS[1]: the set. ARGV: max, lease ms, id.
/// Returns {1, 0} when taken, {0, ms until the oldest lease expires} when full.
pub static ACQUIRE: Lazy<Script> = Lazy::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.max(0, (tonumber(first[2]) or now) - now)}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return {1, 0}
",
    )
});

/// Extend leases still held. KEYS[1]: the set. ARGV: lease ms, ids…
/// Only ids still present are extended (XX): one that expired stays gone.
pub static RENEW: Lazy<Script> = Lazy::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return #ARGV - 1
",
    )
});
