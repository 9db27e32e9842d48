-- leadpulse: write one customer's batch whose outcome the caller computed itself.
--
-- The caller holds the customer's state at version ARGV[3] (its cache) and has
-- applied the batch to it with the same code as the in-memory store: it sends the
-- fields that changed, the event ids it applied, and nothing to interpret. This
-- script only checks that the caller's view is still the stored one, then writes.
-- When it is not (another writer moved the version, or an event id is already
-- stored, i.e. a redelivery), it writes nothing and says so; the caller then runs
-- features/apply.lua, which decides everything itself.
--
-- KEYS[1]  state hash   lp:{tag}:f
-- KEYS[2]  event ids    lp:{tag}:ids
-- ARGV[1]  allowed lateness (ms)
-- ARGV[2]  TTL in seconds for both keys (0 = no TTL)
-- ARGV[3]  the state version the caller holds (never '')
-- ARGV[4]  JSON [applied, set, del]: applied = [[event_id, ts_ms, advanced], ...] in
--          batch order (advanced: 1 if the event moved the customer's clock);
--          set = [field, text, ...] written with %.17g; del = [field, ...]
--
-- Returns {'ok', version} or {'stale'} / {'dup'} (nothing written).
-- write_state() comes from features/write_state.lua, which the store prepends.

local fkey, idkey = KEYS[1], KEYS[2]
local lateness = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local known = ARGV[3]
local plan = cjson.decode(ARGV[4])
local applied, dels = plan[1], plan[3]

-- InMemoryFeatureStore forgets old ids only once it holds more than this many (as apply.lua).
local ID_SOFT_LIMIT = 64

local held = redis.call('HGET', fkey, '_v')
if held ~= known then
  return { 'stale' }
end
for i = 1, #applied do
  if redis.call('ZSCORE', idkey, applied[i][1]) then
    return { 'dup' }
  end
end
if #applied == 0 then
  return { 'ok', known }
end

-- The id bookkeeping apply.lua does, in the same order.
local nids = nil
for i = 1, #applied do
  local eid, ts, advanced = applied[i][1], applied[i][2], applied[i][3]
  redis.call('ZADD', idkey, ts, eid)
  if nids == nil then nids = redis.call('ZCARD', idkey) else nids = nids + 1 end
  if advanced == 1 and nids > ID_SOFT_LIMIT then
    nids = nids - redis.call('ZREMRANGEBYSCORE', idkey, '-inf', '(' .. string.format('%.17g', ts - lateness))
  end
end

local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local next_version = tonumber(known) + 1
if now_us > next_version then next_version = now_us end
local version = string.format('%.17g', next_version)

local sets = { '_v', version }
for i = 1, #plan[2] do sets[#sets + 1] = plan[2][i] end
write_state(fkey, idkey, sets, dels, ttl)
return { 'ok', version }
