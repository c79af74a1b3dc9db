-- A fan leaves: gives up a place in the queue or ends an admitted session (freeing its slot).
-- KEYS: pre, q, active, adm, hb
-- ARGV: user
-- Returns 1 when the fan had a place or a session, 0 otherwise.
local user = ARGV[1]
local removed = redis.call('SREM', KEYS[1], user) + redis.call('ZREM', KEYS[2], user)
  + redis.call('ZREM', KEYS[3], user)
redis.call('HDEL', KEYS[4], user)
redis.call('ZREM', KEYS[5], user)
if removed > 0 then return 1 else return 0 end
