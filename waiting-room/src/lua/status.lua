-- A fan's place, read-only apart from recording that the fan is still there.
-- KEYS: cfg, pre, q, serving, active, adm, hb
-- ARGV: user, now_ms
-- Returns {state, number, serving, session_deadline_ms, rate_milli}: state is prequeue | waiting |
-- admitted | sold_out | closed | not_queued.
local user = ARGV[1]
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local serving = tonumber(redis.call('GET', KEYS[4]) or '0')
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate_milli') or '0')
local number = redis.call('HGET', KEYS[6], user)
local deadline = redis.call('ZSCORE', KEYS[5], user)
if number and deadline then
  redis.call('ZADD', KEYS[7], ARGV[2], user)
  return {'admitted', tonumber(number), serving, tonumber(deadline), rate}
end
number = redis.call('ZSCORE', KEYS[3], user)
if number then
  redis.call('ZADD', KEYS[7], ARGV[2], user)
  return {'waiting', tonumber(number), serving, 0, rate}
end
if redis.call('SISMEMBER', KEYS[2], user) == 1 then
  redis.call('ZADD', KEYS[7], ARGV[2], user)
  return {'prequeue', 0, serving, 0, rate}
end
if state == 'sold_out' or state == 'closed' or state == 'scheduled' then
  return {state == 'sold_out' and 'sold_out' or 'closed', 0, serving, 0, rate}
end
return {'not_queued', 0, serving, 0, rate}
