-- commit.lua: write N resource versions, set M cells and keep K staged
-- blob streams atomically. Every condition is checked before anything is
-- written (Redis does not roll a script back half way).
-- KEYS[1]  log size   {log}:n   counter (only touched with a leaf)
-- KEYS[2]  log leaves {log}:l   hash: leaf index -> leaf data
-- then for write i (1..N), KEYS[3i], KEYS[3i+1], KEYS[3i+2]:
--          resource hash {T}:r:<id>  fields: cur, t (terms), v:<n>; or only erased
--          type history  {T}:h       zset score=updated ms, member=<id>/<n>
--          live ids      {T}:ids     set
-- then for cell j (1..M), KEYS[3N+2+j]: the cell hash {cells}:<id>  fields: v, d
-- then for stream s (1..K), KEYS[3N+2+M+s]: the stream hash {blob}:<stream>,
--          staged while it has a TTL; kept (PERSIST) with the writes
-- ARGV[1]  N
-- ARGV[2]  byte offset of the leaf index in a version value
-- ARGV[3]  K
-- then for write i, ARGV[3+10(i-1)+1 .. +10]:
--   1 key prefix "fg:{T}:" (index keys are built from it)
--   2 expected current version ("0" = must not exist)
--   3 new version
--   4 encoded version value
--   5 encoded terms of the new version
--   6 history score
--   7 id
--   8 deleted ("1"/"0")
--   9 JSON: {old:[[param,value]...], new:[...], guard:[[[param,value]...]...] or null,
--          gp: key prefix of the guard's type}
--   10 leaf data ("" = none): appended to the log, its index written into
--      the version value at byte offset ARGV[2] (8 bytes, big endian)
-- then for cell j, ARGV[3+10N+3(j-1)+1 .. +3]: expected version ("0" = never
-- written), new version, value.
-- Returns {'ok'}, {'erased'|'conflict'|'exists', write index from 0},
-- {'cell'} or {'keep'} (a stream is not staged: absent, or already kept).
local n, nk = tonumber(ARGV[1]), tonumber(ARGV[3])
local function key(i, k) return KEYS[2 + 3 * (i - 1) + k] end
local function argv(i, k) return ARGV[3 + 10 * (i - 1) + k] end

-- matches reports whether any live resource of the guard's type matches it.
local function matches(gp, guard)
  if #guard == 0 then
    return redis.call('SCARD', gp .. 'ids') > 0
  end
  local acc = nil
  for _, clause in ipairs(guard) do
    local set = {}
    for _, m in ipairs(clause) do
      for _, x in ipairs(redis.call('SMEMBERS', gp .. 'x:' .. m[1] .. ':' .. m[2])) do
        set[x] = true
      end
    end
    if acc == nil then
      acc = set
    else
      local both = {}
      for x in pairs(acc) do if set[x] then both[x] = true end end
      acc = both
    end
  end
  return acc ~= nil and next(acc) ~= nil
end

local specs = {}
for i = 1, n do
  if redis.call('HEXISTS', key(i, 1), 'erased') == 1 then
    return {'erased', i - 1}
  end
  if (redis.call('HGET', key(i, 1), 'cur') or '0') ~= argv(i, 2) then
    return {'conflict', i - 1}
  end
  local spec = cjson.decode(argv(i, 9))
  if spec.guard ~= cjson.null and spec.guard ~= nil and matches(spec.gp, spec.guard) then
    return {'exists', i - 1}
  end
  specs[i] = spec
end
local c0, a0 = 2 + 3 * n, 3 + 10 * n
local m = #KEYS - c0 - nk
for j = 1, m do
  if (redis.call('HGET', KEYS[c0 + j], 'v') or '0') ~= ARGV[a0 + 3 * (j - 1) + 1] then
    return {'cell'}
  end
end
-- PTTL: -2 absent (never written, dropped or expired), -1 kept.
local s0 = c0 + m
for s = 1, nk do
  if redis.call('PTTL', KEYS[s0 + s]) < 0 then
    return {'keep'}
  end
end

local off = tonumber(ARGV[2])
for i = 1, n do
  local p, id, ver, spec = argv(i, 1), argv(i, 7), argv(i, 3), specs[i]
  for _, t in ipairs(spec.old) do
    redis.call('SREM', p .. 'x:' .. t[1] .. ':' .. t[2], id)
  end
  for _, t in ipairs(spec.new) do
    redis.call('SADD', p .. 'x:' .. t[1] .. ':' .. t[2], id)
  end
  local val = argv(i, 4)
  if argv(i, 10) ~= '' then
    local x = redis.call('INCR', KEYS[1]) - 1
    redis.call('HSET', KEYS[2], x, argv(i, 10))
    val = string.sub(val, 1, off) .. struct.pack('>I4I4', math.floor(x / 4294967296), x % 4294967296) .. string.sub(val, off + 9)
  end
  redis.call('HSET', key(i, 1), 'cur', ver, 't', argv(i, 5), 'v:' .. ver, val)
  redis.call('ZADD', key(i, 2), argv(i, 6), id .. '/' .. ver)
  if argv(i, 8) == '1' then
    redis.call('SREM', key(i, 3), id)
  else
    redis.call('SADD', key(i, 3), id)
  end
end
for j = 1, m do
  local b = a0 + 3 * (j - 1)
  redis.call('HSET', KEYS[c0 + j], 'v', ARGV[b + 2], 'd', ARGV[b + 3])
end
for s = 1, nk do
  redis.call('PERSIST', KEYS[s0 + s])
end
return {'ok'}
