-- Atomic append for one account. Every check happens before the first write, because Redis does not
-- roll back a script that fails half-way.
--
-- KEYS[1] account stream    KEYS[2] version record    KEYS[3] partition log    KEYS[4] snapshot
-- KEYS[5] idempotency record (only when the request carries an Idempotency-Key)
-- ARGV[1] expected version  ARGV[2] number of events
-- ARGV[3] request fingerprint  ARGV[4] result to replay  ARGV[5] idempotency TTL in seconds
-- ARGV[6] snapshot of the state after these events (JSON), or "" for none
-- ARGV[7...] per event: an item count k, then k field/value items in the order of
--            shared/stream_codec.py, whose first pair is the version with an empty value: filled in here
--
-- Replies: {"ok", new version} | {"conflict", current version} | {"duplicate", fingerprint, result}

if KEYS[5] then
  local prior = redis.call('HMGET', KEYS[5], 'fingerprint', 'result')
  if prior[1] then
    return {'duplicate', prior[1], prior[2]}
  end
end

local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[1]) then
  return {'conflict', current}
end

local version = current
local at = 7
for _ = 1, tonumber(ARGV[2]) do
  local count = tonumber(ARGV[at])
  local items = {}
  for i = 1, count do
    items[i] = ARGV[at + i]
  end
  at = at + count + 1
  version = version + 1
  items[2] = version
  -- The entry id is the version, so XRANGE can seek straight to any version.
  redis.call('XADD', KEYS[1], version .. '-0', unpack(items))
  redis.call('XADD', KEYS[3], '*', unpack(items))
end
redis.call('SET', KEYS[2], version)

if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], 'version', version, 'state', ARGV[6])
end
if KEYS[5] then
  redis.call('HSET', KEYS[5], 'fingerprint', ARGV[3], 'result', ARGV[4])
  redis.call('EXPIRE', KEYS[5], ARGV[5])
end
return {'ok', version}
