-- put.lua: write one resource version atomically.
-- KEYS[1] resource hash   {T}:r:<id>   fields: cur, t (terms), v:<n>; or only erased
-- KEYS[2] type history    {T}:h        zset score=updated ms, member=<id>/<n>
-- KEYS[3] live ids        {T}:ids      set
-- KEYS[4] log size        {log}:n      counter (only touched with a leaf)
-- KEYS[5] log leaves      {log}:l      hash: leaf index -> leaf data
-- ARGV[1] key prefix "fg:{T}:" (every key this script builds shares the slot)
-- ARGV[2] expected current version ("0" = must not exist)
-- ARGV[3] new version
-- ARGV[4] encoded version value
-- ARGV[5] encoded terms of the new version
-- ARGV[6] history score
-- ARGV[7] id
-- ARGV[8] deleted ("1"/"0")
-- ARGV[9] JSON: {old:[[param,value]...], new:[...], guard:[[[param,value]...]...] or null}
-- ARGV[10] leaf data ("" = none): appended to the log, its index written
--          into the version value at byte offset ARGV[11] (8 bytes, big endian)
if redis.call('HEXISTS', KEYS[1], 'erased') == 1 then
  return 'erased'
end
local cur = redis.call('HGET', KEYS[1], 'cur') or '0'
if cur ~= ARGV[2] then
  return 'conflict'
end
local p = ARGV[1]
local id = ARGV[7]
local spec = cjson.decode(ARGV[9])

if spec.guard ~= cjson.null and spec.guard ~= nil then
  if #spec.guard == 0 then
    if redis.call('SCARD', KEYS[3]) > 0 then return 'exists' end
  else
    local acc = nil
    for _, clause in ipairs(spec.guard) do
      local set = {}
      for _, m in ipairs(clause) do
        for _, x in ipairs(redis.call('SMEMBERS', p .. 'x:' .. m[1] .. ':' .. m[2])) do
          set[x] = true
        end
      end
      if acc == nil then
        acc = set
      else
        local n = {}
        for x in pairs(acc) do if set[x] then n[x] = true end end
        acc = n
      end
    end
    if acc ~= nil and next(acc) ~= nil then return 'exists' end
  end
end

for _, t in ipairs(spec.old) do
  redis.call('SREM', p .. 'x:' .. t[1] .. ':' .. t[2], id)
end
for _, t in ipairs(spec.new) do
  redis.call('SADD', p .. 'x:' .. t[1] .. ':' .. t[2], id)
end
local val = ARGV[4]
if ARGV[10] ~= '' then
  local n = redis.call('INCR', KEYS[4]) - 1
  redis.call('HSET', KEYS[5], n, ARGV[10])
  local off = tonumber(ARGV[11])
  val = string.sub(val, 1, off) .. struct.pack('>I4I4', math.floor(n / 4294967296), n % 4294967296) .. string.sub(val, off + 9)
end
redis.call('HSET', KEYS[1], 'cur', ARGV[3], 't', ARGV[5], 'v:' .. ARGV[3], val)
redis.call('ZADD', KEYS[2], ARGV[6], id .. '/' .. ARGV[3])
if ARGV[8] == '1' then
  redis.call('SREM', KEYS[3], id)
else
  redis.call('SADD', KEYS[3], id)
end
return 'ok'
