-- leadpulse: shared by apply.lua and apply_known.lua (the store prepends it to both).
--
-- Write fields and deletions to a customer's state hash, in chunks (unpack() is
-- bounded by the Lua C stack), and refresh the TTL of both of its keys.
-- sets = {field, text, field, text, ...}; dels = {field, ...}.
local function write_state(fkey, idkey, sets, dels, ttl)
  local CHUNK = 2000
  for first = 1, #sets, CHUNK do
    local last = first + CHUNK - 1
    if last > #sets then last = #sets end
    redis.call('HSET', fkey, unpack(sets, first, last))
  end
  for first = 1, #dels, CHUNK do
    local last = first + CHUNK - 1
    if last > #dels then last = #dels end
    redis.call('HDEL', fkey, unpack(dels, first, last))
  end
  if ttl > 0 then
    redis.call('EXPIRE', fkey, ttl)
    redis.call('EXPIRE', idkey, ttl)
  end
end
