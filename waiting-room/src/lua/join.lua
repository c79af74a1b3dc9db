-- Joins a fan to a show's waiting room, or returns the place they already have.
-- KEYS: cfg, pre, q, seq, active, adm, hb
-- ARGV: user, now_ms
-- Returns {state, number, new}: state is prequeue | waiting | admitted | sold_out | closed.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'prequeue' and state ~= 'open' and state ~= 'paused' and state ~= 'sold_out' then
  return {'closed', 0, 0}
end
local user = ARGV[1]
local admitted = redis.call('HGET', KEYS[6], user)
if admitted and redis.call('ZSCORE', KEYS[5], user) then
  redis.call('ZADD', KEYS[7], ARGV[2], user)
  return {'admitted', tonumber(admitted), 0}
end
local number = redis.call('ZSCORE', KEYS[3], user)
if number then
  redis.call('ZADD', KEYS[7], ARGV[2], user)
  return {'waiting', tonumber(number), 0}
end
if state == 'sold_out' then
  return {'sold_out', 0, 0}
end
if state == 'prequeue' then
  local added = redis.call('SADD', KEYS[2], user)
  redis.call('ZADD', KEYS[7], ARGV[2], user)
  return {'prequeue', 0, added}
end
number = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[3], number, user)
redis.call('ZADD', KEYS[7], ARGV[2], user)
return {'waiting', number, 1}
