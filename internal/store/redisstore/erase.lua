-- erase.lua: erase one resource atomically, leaving a marker.
-- KEYS[1] resource hash   {T}:r:<id>   replaced by one holding only erased=1
-- KEYS[2] type history    {T}:h
-- KEYS[3] live ids        {T}:ids
-- ARGV[1] key prefix "fg:{T}:"
-- ARGV[2] id
-- ARGV[3] current version the caller read ("0" = none)
-- ARGV[4] JSON: [[param,value]...], the terms the caller read with it
local cur = redis.call('HGET', KEYS[1], 'cur') or '0'
if cur ~= ARGV[3] then
  return 'conflict'
end
local p = ARGV[1]
local id = ARGV[2]
for _, t in ipairs(cjson.decode(ARGV[4])) do
  redis.call('SREM', p .. 'x:' .. t[1] .. ':' .. t[2], id)
end
for n = 1, tonumber(cur) do
  redis.call('ZREM', KEYS[2], id .. '/' .. n)
end
redis.call('SREM', KEYS[3], id)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'erased', '1')
return 'ok'
