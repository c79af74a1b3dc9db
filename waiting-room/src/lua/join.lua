-- Joins a fan to a show's waiting room, or returns the place they already have, in one round
-- trip: the answer carries everything the fan is shown.
-- KEYS: cfg, pre, q, seq, serving, active, adm, hb
-- ARGV: user, now_ms
-- Returns {state, number, serving, session_deadline_ms, rate_milli, new}: state is prequeue |
-- waiting | admitted | sold_out | closed.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'prequeue' and state ~= 'open' and state ~= 'paused' and state ~= 'sold_out' then
  return {'closed', 0, 0, 0, 0, 0}
end
local user = ARGV[1]
local serving = tonumber(redis.call('GET', KEYS[5]) or '0')
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate_milli') or '0')
local admitted = redis.call('HGET', KEYS[7], user)
local deadline = redis.call('ZSCORE', KEYS[6], user)
if admitted and deadline then
  redis.call('ZADD', KEYS[8], ARGV[2], user)
  return {'admitted', tonumber(admitted), serving, tonumber(deadline), rate, 0}
end
local number = redis.call('ZSCORE', KEYS[3], user)
if number then
  redis.call('ZADD', KEYS[8], ARGV[2], user)
  return {'waiting', tonumber(number), serving, 0, rate, 0}
end
if state == 'sold_out' then
  return {'sold_out', 0, serving, 0, rate, 0}
end
if state == 'prequeue' then
  local added = redis.call('SADD', KEYS[2], user)
  redis.call('ZADD', KEYS[8], ARGV[2], user)
  return {'prequeue', 0, serving, 0, rate, added}
end
number = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[3], number, user)
redis.call('ZADD', KEYS[8], ARGV[2], user)
return {'waiting', number, serving, 0, rate, 1}
