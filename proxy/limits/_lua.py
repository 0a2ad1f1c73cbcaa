"""The Lua scripts of :mod:`proxy.limits.redis`.

Each runs atomically inside Redis and reads the time with ``TIME``, never the
client's clock, so processes on several hosts agree. Buckets are unix seconds;
the bucket of second ``b`` counts while ``now < b + window``.
"""

# Admit: check concurrency, rpm and tpm; only if all pass, count the request
# and take the lease. One script, so no other client interleaves.
#   KEYS  rpm hash, tpm hash, conc zset
#   ARGV  rpm limit, tpm limit, concurrency limit ('' = unlimited, unchecked),
#         lease id, lease ttl (ms), window (s)
#   Returns {allowed, rpm used, rpm wait ms, tpm used, tpm wait ms, leases held}
#   (-1 for an unchecked policy). "wait" is, for a refusing policy, the time
#   until the window would admit one more; otherwise the time until its
#   oldest counted bucket expires (0 if none).
ADMIT_LUA = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[6])

-- Delete buckets that left the window (bucket b counts while now < b + window);
-- return the sum of the others and the others, oldest first.
local function scan(key)
  local raw = redis.call('HGETALL', key)
  local live, stale, used = {}, {}, 0
  for i = 1, #raw, 2 do
    local b = tonumber(raw[i])
    if b <= sec - window then
      stale[#stale + 1] = raw[i]
    else
      local v = tonumber(raw[i + 1])
      live[#live + 1] = {b, v}
      used = used + v
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(live, function(x, y) return x[1] < y[1] end)
  return used, live
end

-- ms until at most `keep` is counted, as the oldest buckets expire.
local function wait_ms(live, used, keep)
  for _, bv in ipairs(live) do
    used = used - bv[2]
    if used <= keep then return (bv[1] + window) * 1000 - now_ms end
  end
  if used <= keep then return 0 end
  return window * 1000  -- a limit of 0: never
end

local allowed = 1
local rpm_used, rpm_wait, tpm_used, tpm_wait, held = -1, -1, -1, -1, -1
if ARGV[3] ~= '' then
  -- Leases past their expiry belong to dead or stuck processes: reclaim them.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  held = redis.call('ZCARD', KEYS[3])
  if held >= tonumber(ARGV[3]) then allowed = 0 end
end
if ARGV[1] ~= '' then
  local limit = tonumber(ARGV[1])
  local live
  rpm_used, live = scan(KEYS[1])
  if rpm_used + 1 > limit then
    allowed = 0
    rpm_wait = wait_ms(live, rpm_used, limit - 1)
  else
    -- Oldest counted bucket once this request is counted (maybe this second's).
    local oldest = sec
    if #live > 0 then oldest = live[1][1] end
    rpm_wait = (oldest + window) * 1000 - now_ms
  end
end
if ARGV[2] ~= '' then
  local limit = tonumber(ARGV[2])
  local live
  tpm_used, live = scan(KEYS[2])
  if tpm_used >= limit then
    allowed = 0
    tpm_wait = wait_ms(live, tpm_used, limit - 1)
  else
    tpm_wait = wait_ms(live, tpm_used, tpm_used)
  end
end
if allowed == 1 then
  if ARGV[1] ~= '' then
    redis.call('HINCRBY', KEYS[1], t[1], 1)
    redis.call('EXPIRE', KEYS[1], window * 2)  -- idle keys vanish
  end
  if ARGV[3] ~= '' then
    local ttl = tonumber(ARGV[5])
    redis.call('ZADD', KEYS[3], now_ms + ttl, ARGV[4])
    redis.call('PEXPIRE', KEYS[3], ttl + 1000)  -- outlives every lease in it
  end
end
return {allowed, rpm_used, rpm_wait, tpm_used, tpm_wait, held}
"""

# Charge tokens to the current second's tpm bucket, on Redis's clock.
#   KEYS tpm hash; ARGV tokens, key ttl (s)
CHARGE_LUA = """
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], t[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Push the expiry of leases we still hold to now + ttl. XX: a lease that was
# released (or already reclaimed) meanwhile is not brought back.
#   KEYS conc zset; ARGV ttl (ms), lease ids...
REFRESH_LUA = """
local t = redis.call('TIME')
local ttl = tonumber(ARGV[1])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl + 1000)
return 1
"""
