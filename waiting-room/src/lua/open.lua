-- Opens the sale: numbers the pre-queue in the shuffled order computed from the seed, reveals
-- the seed, switches the room to open. Fans who joined the pre-queue while the shuffle was being
-- computed come right after it, in user-id order.
-- KEYS: cfg, pre, q, seq, lease
-- ARGV: lease_token, seed_hex, user_1 .. user_n (the shuffled snapshot)
-- Returns the last number given, or -1 when the lease is not ours, or -2 when not in prequeue.
if redis.call('GET', KEYS[5]) ~= ARGV[1] then
  return -1
end
if redis.call('HGET', KEYS[1], 'state') ~= 'prequeue' then
  return -2
end
local n = 0
for i = 3, #ARGV do
  local user = ARGV[i]
  if redis.call('SREM', KEYS[2], user) == 1 then
    n = n + 1
    redis.call('ZADD', KEYS[3], n, user)
  end
end
local snapshot = n
local late = redis.call('SMEMBERS', KEYS[2])
table.sort(late)
for _, user in ipairs(late) do
  n = n + 1
  redis.call('ZADD', KEYS[3], n, user)
end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[4], n)
redis.call('HSET', KEYS[1], 'state', 'open', 'seed', ARGV[2], 'prequeue_size', snapshot, 'late_size', #late)
return n
