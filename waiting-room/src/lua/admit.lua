-- One admission tick of one show, run only by the holder of the show's lease.
-- KEYS: cfg, q, serving, active, adm, hb, lease, log
-- ARGV: lease_token, now_ms, budget, session_ms, grace_ms, max_skips
-- Returns {admitted, serving, active, skipped, waiting} or {-1} when the lease is not ours.
-- Every place passed is appended to the admission log (a stream whose entry ids are Redis time):
-- n = queue number, u = fan, o = a (admitted) or s (skipped).
if redis.call('GET', KEYS[7]) ~= ARGV[1] then
  return {-1}
end
local now = tonumber(ARGV[2])
-- Sessions past their deadline end and free their active slots.
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local serving = tonumber(redis.call('GET', KEYS[3]) or '0')
local active = redis.call('ZCARD', KEYS[4])
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then
  return {0, serving, active, 0, redis.call('ZCARD', KEYS[2])}
end
local max_active = tonumber(redis.call('HGET', KEYS[1], 'max_active') or '0')
local budget = math.min(tonumber(ARGV[3]), max_active - active)
local deadline = now + tonumber(ARGV[4])
local oldest_alive = now - tonumber(ARGV[5])
local max_skips = tonumber(ARGV[6])
local admitted, skipped = 0, 0
while admitted < budget and skipped < max_skips do
  -- The lowest numbers first: strictly first come, first served.
  local batch = redis.call('ZRANGE', KEYS[2], 0, budget - admitted - 1, 'WITHSCORES')
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    local user, number = batch[i], tonumber(batch[i + 1])
    redis.call('ZREM', KEYS[2], user)
    serving = number
    local seen = tonumber(redis.call('ZSCORE', KEYS[6], user) or '0')
    if seen >= oldest_alive then
      redis.call('ZADD', KEYS[4], deadline, user)
      redis.call('HSET', KEYS[5], user, number)
      redis.call('XADD', KEYS[8], '*', 'n', number, 'u', user, 'o', 'a')
      admitted = admitted + 1
    else
      -- Gone quiet for longer than the grace period: the place is forfeited.
      redis.call('ZREM', KEYS[6], user)
      redis.call('XADD', KEYS[8], '*', 'n', number, 'u', user, 'o', 's')
      skipped = skipped + 1
    end
  end
end
redis.call('SET', KEYS[3], serving)
return {admitted, serving, active + admitted, skipped, redis.call('ZCARD', KEYS[2])}
