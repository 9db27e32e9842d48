-- leadpulse: apply one customer's batch of updates atomically.
--
-- Mirrors features.engine.apply_ops and InMemoryFeatureStore._apply_one
-- exactly; tests/features/test_store_equivalence.py proves it.
--
-- KEYS[1]  state hash   lp:{tag}:f    field -> number written with %.17g
-- KEYS[2]  event ids    lp:{tag}:ids  zset member event_id, score event time
-- ARGV[1]  allowed lateness (ms)
-- ARGV[2]  TTL in seconds for both keys (0 = no TTL)
-- ARGV[3]  JSON array of updates [[event_id, ts_ms, [op, ...]], ...]
-- ARGV[4]  the state version the caller holds ('' = none)
--          op = ["r", name, slots, idx, amount, mode] | ["a", field, amount]
--             | ["x", field, value] | ["n", field, value]
--             | ["d", name, ts, amount, half_life] | ["s", base, value, ts, cap]
--
-- Returns {statuses, before, version}: statuses is one letter per update (a =
-- applied, d = duplicate, l = late); before is the hash as it was before the
-- batch, a JSON array [field1, value1, ...] of the raw stored strings (HGETALL),
-- or '' when the caller already holds that state (ARGV[4] is its version);
-- version is the state's version after the batch ('' while there is none).
--
-- The version (field _v) changes with every batch that applies something, so a
-- caller that cached a state can tell whether anyone else changed it since.
--
-- Nothing is written before every update has been validated, and all writes
-- come after the last possible error, so a bad batch changes nothing.
--
-- write_state() comes from features/write_state.lua, which the store prepends.

if redis.replicate_commands then
  redis.replicate_commands()
end

local fkey, idkey = KEYS[1], KEYS[2]
local lateness = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local updates = cjson.decode(ARGV[3])
local known = ARGV[4] or ''

local TIME_FIELD = '_t'
local VERSION_FIELD = '_v'
-- InMemoryFeatureStore forgets old ids only once it holds more than this many.
local ID_SOFT_LIMIT = 64

local floor, fmod, pow = math.floor, math.fmod, math.pow
local format, byte, sub = string.format, string.byte, string.sub

local function isnum(x) return type(x) == 'number' end
local function isstr(x) return type(x) == 'string' end
local function isint(x) return type(x) == 'number' and x == floor(x) and x == x end

-- Validation pass: the only errors this script can raise happen here.
local arity = { r = 6, a = 3, x = 3, n = 3, d = 5, s = 5 }
for i = 1, #updates do
  local up = updates[i]
  if type(up) ~= 'table' or not isstr(up[1]) or not isnum(up[2]) or type(up[3]) ~= 'table' then
    return redis.error_reply('ERR leadpulse: malformed update #' .. i)
  end
  local ops = up[3]
  for j = 1, #ops do
    local op = ops[j]
    local code = type(op) == 'table' and op[1]
    local ok = arity[code] ~= nil and #op == arity[code]
    if ok then
      if code == 'r' then
        ok = isstr(op[2]) and isint(op[3]) and op[3] > 0 and isint(op[4]) and isnum(op[5]) and isnum(op[6])
      elseif code == 'd' then
        ok = isstr(op[2]) and isnum(op[3]) and isnum(op[4]) and isnum(op[5])
      elseif code == 's' then
        ok = isstr(op[2]) and isstr(op[3]) and isnum(op[4]) and isnum(op[5])
      else
        ok = isstr(op[2]) and isnum(op[3])
      end
    end
    if not ok then
      return redis.error_reply('ERR leadpulse: malformed operation #' .. j .. ' in update #' .. i)
    end
  end
end

-- The fields a ring operation touches (the slot's bucket index and value).
local function ring_keys(name, slots, idx)
  -- fmod is exact on doubles; Python's % is non-negative for slots > 0.
  local slot = fmod(idx, slots)
  if slot < 0 then slot = slot + slots end
  local sslot = format('%d', slot)
  return name .. '|' .. sslot .. 'i', name .. '|' .. sslot .. 'v'
end

-- The fields this batch can touch, and per distinct base how many values it may add.
local need, seen = {}, {}
local function want(k)
  if not seen[k] then
    seen[k] = true
    need[#need + 1] = k
  end
end
want(TIME_FIELD)
want(VERSION_FIELD)
local adds = {} -- base -> {count, smallest cap}
for i = 1, #updates do
  local ops = updates[i][3]
  for j = 1, #ops do
    local op = ops[j]
    local code = op[1]
    if code == 'r' then
      local ikey, vkey = ring_keys(op[2], op[3], op[4])
      want(ikey)
      want(vkey)
    elseif code == 'd' then
      want(op[2] .. '|v')
      want(op[2] .. '|t')
    elseif code == 's' then
      want(op[2] .. '|d|' .. op[3])
      want(op[2] .. '|n')
      local a = adds[op[2]]
      if a == nil then adds[op[2]] = { 1, op[5] } else
        a[1] = a[1] + 1
        if op[5] < a[2] then a[2] = op[5] end
      end
    else
      want(op[2])
    end
  end
end

-- Load the state: numbers in `state`, stored text in `orig`. A caller holding the
-- current version needs only the touched fields back in Lua; anyone else needs the
-- whole hash (to be sent back), and so does a batch that may evict distinct values.
local state, orig = {}, {}
local raw = nil
local function load(fields, values)
  for i = 1, #fields do
    local text = values[i]
    if text then
      local v = tonumber(text)
      if v == nil then return false end
      state[fields[i]] = v
      orig[fields[i]] = text
    end
  end
  return true
end
local full = known == '' or #need > 4000 -- unpack() is bounded by the Lua C stack
if not full then
  if not load(need, redis.call('HMGET', fkey, unpack(need))) then
    return redis.error_reply('ERR leadpulse: non-numeric field in feature hash')
  end
  full = orig[VERSION_FIELD] ~= known
  for base, a in pairs(adds) do
    if (state[base .. '|n'] or 0) + a[1] > a[2] then full = true end
  end
end
if full then
  raw = redis.call('HGETALL', fkey)
  local fields, values = {}, {}
  for i = 1, #raw, 2 do
    fields[#fields + 1] = raw[i]
    values[#values + 1] = raw[i + 1]
  end
  state, orig = {}, {}
  if not load(fields, values) then
    return redis.error_reply('ERR leadpulse: non-numeric field in feature hash')
  end
end
local dirty = {}

local function set(k, v)
  state[k] = v
  dirty[k] = true
end

-- Python compares str by code point; UTF-8 bytes sort the same way. Lua's `<`
-- on strings uses strcoll (locale-dependent), so compare bytes explicitly.
local function bytes_lt(a, b)
  local n = #a
  if #b < n then n = #b end
  for i = 1, n do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Only reached with the whole hash loaded (see the load above).
local function evict_oldest(prefix, nkey)
  -- Smallest (time, key) goes, as Python's min() over (value, key) tuples.
  local plen = #prefix
  local best_k, best_v = nil, nil
  for k, v in pairs(state) do
    if sub(k, 1, plen) == prefix then
      if best_k == nil or v < best_v or (v == best_v and bytes_lt(k, best_k)) then
        best_k, best_v = k, v
      end
    end
  end
  set(best_k, nil)
  set(nkey, state[nkey] - 1.0)
end

local function apply_ops(ops)
  for j = 1, #ops do
    local op = ops[j]
    local code = op[1]
    if code == 'r' then
      local idx, amount, mode = op[4], op[5], op[6]
      local ikey, vkey = ring_keys(op[2], op[3], idx)
      local held = state[ikey]
      if held == nil or idx > held then
        set(ikey, idx)
        set(vkey, amount)
      elseif idx == held then
        if mode ~= 0 then
          if amount > state[vkey] then set(vkey, amount) end
        else
          set(vkey, state[vkey] + amount)
        end
      end
    elseif code == 'a' then
      set(op[2], (state[op[2]] or 0.0) + op[3])
    elseif code == 'x' then
      local held = state[op[2]]
      if held == nil or op[3] > held then set(op[2], op[3]) end
    elseif code == 'n' then
      local held = state[op[2]]
      if held == nil or op[3] < held then set(op[2], op[3]) end
    elseif code == 'd' then
      local name, ts, amount, half_life = op[2], op[3], op[4], op[5]
      local vkey, tkey = name .. '|v', name .. '|t'
      local last = state[tkey]
      if last == nil then
        set(vkey, amount)
        set(tkey, ts)
      elseif ts >= last then
        set(vkey, state[vkey] * pow(2.0, -(ts - last) / half_life) + amount)
        set(tkey, ts)
      else
        set(vkey, state[vkey] + amount * pow(2.0, -(last - ts) / half_life))
      end
    elseif code == 's' then
      local base, value, ts, cap = op[2], op[3], op[4], op[5]
      local key, nkey = base .. '|d|' .. value, base .. '|n'
      local held = state[key]
      if held == nil then
        set(key, ts)
        set(nkey, (state[nkey] or 0.0) + 1.0)
        if state[nkey] > cap then evict_oldest(base .. '|d|', nkey) end
      elseif ts > held then
        set(key, ts)
      end
    end
  end
end

local statuses = {}
local nids = nil -- ZCARD, fetched lazily
local applied = false
for i = 1, #updates do
  local up = updates[i]
  local eid, ts = up[1], up[2]
  local newest = state[TIME_FIELD]
  -- An id already applied is a redelivery (a duplicate), however far behind it is: only
  -- an event never applied counts as late.
  if redis.call('ZSCORE', idkey, eid) then
    statuses[i] = 'd'
  elseif newest ~= nil and ts < newest - lateness then
    statuses[i] = 'l'
  else
    apply_ops(up[3])
    redis.call('ZADD', idkey, ts, eid)
    applied = true
    if nids == nil then nids = redis.call('ZCARD', idkey) else nids = nids + 1 end
    if newest == nil or ts > newest then
      set(TIME_FIELD, ts)
      if nids > ID_SOFT_LIMIT then
        -- Ids older than the lateness horizon are forgotten: a redelivery of one counts as late.
        nids = nids - redis.call('ZREMRANGEBYSCORE', idkey, '-inf', '(' .. format('%.17g', ts - lateness))
      end
    end
    statuses[i] = 'a'
  end
end

local version = orig[VERSION_FIELD] or ''
if applied then
  -- Above the last version and at least the server clock in microseconds: a state
  -- erased and created anew never comes back with a version a cache still holds.
  local now = redis.call('TIME')
  local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local next_version = (state[VERSION_FIELD] or 0) + 1
  if now_us > next_version then next_version = now_us end
  set(VERSION_FIELD, next_version)
  version = format('%.17g', state[VERSION_FIELD])
  local hset, hdel = {}, {}
  for k in pairs(dirty) do
    local v = state[k]
    if v == nil then
      if orig[k] ~= nil then hdel[#hdel + 1] = k end
    else
      local text = format('%.17g', v)
      if text ~= orig[k] then
        hset[#hset + 1] = k
        hset[#hset + 1] = text
      end
    end
  end
  write_state(fkey, idkey, hset, hdel, ttl)
end

-- The before-state travels as one JSON array of strings: a single bulk reply is far
-- cheaper for the client to parse than a multi-bulk of hundreds of elements.
local before = '[]'
if known ~= '' and known == orig[VERSION_FIELD] then
  before = ''
elseif raw ~= nil and #raw > 0 then
  before = cjson.encode(raw)
end
return { table.concat(statuses), before, version }
