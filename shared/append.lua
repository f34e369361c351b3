-- Atomic append for one account. Every check happens before the first write, because Redis does not
-- roll back a script that fails half-way.
--
-- KEYS[1] account stream    KEYS[2] version record    KEYS[3] partition log    KEYS[4] snapshot
-- KEYS[5] the partition's set of accounts due for archiving
-- KEYS[6] idempotency record (only when the request carries an Idempotency-Key)
-- ARGV[1] expected version  ARGV[2] snapshot of the state after these events (JSON), or "" for none
-- ARGV[3] number of events  ARGV[4...] per event, the value of each field of FIELDS after the version
-- then, only with KEYS[6]: the idempotency record's value (the fingerprint's 32 bytes, then the result to
-- replay: one string, the smallest thing Redis can keep with a TTL) and its TTL in seconds
--
-- Replies: {"ok", new version, the partition-log id of the last event} | {"conflict", current version} | {"duplicate", value} or, for a record
-- written before 2026-12-05 as a hash, {"duplicate", fingerprint, result}

-- The entry's field names, in order, the version first: filled in from shared/stream_codec.py when the
-- script is loaded, so a call carries only the values (each argument costs the caller and Redis).
local FIELDS = {--[[FIELDS]]}
-- PARTITION_LOG_MAX_ENTRIES, filled in at load: the log stays bounded even when no projector trims it (the
-- projectors trim far sooner, behind their checkpoints). '~' trims whole nodes only, so it costs nothing.
local LOG_MAX = --[[LOG_MAX]]
-- ARCHIVE_AFTER_EVENTS, filled in at load (0: no archive): each time the version passes a multiple of it, the
-- account is due to have its older events moved to the archive (projector/archiving.py).
local ARCHIVE_EVERY = --[[ARCHIVE_EVERY]]

if KEYS[6] then
  local value = redis.pcall('GET', KEYS[6])
  if type(value) == 'table' and value.err then  -- WRONGTYPE: a hash, from before records were strings
    local prior = redis.call('HMGET', KEYS[6], 'fingerprint', 'result')
    if prior[1] then
      return {'duplicate', prior[1], prior[2]}
    end
  elseif value then
    return {'duplicate', value}
  end
end

local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[1]) then
  return {'conflict', current}
end

local version = current
local at = 4
local logged
for _ = 1, tonumber(ARGV[3]) do
  version = version + 1
  -- The entry id is the version, so XRANGE can seek straight to any version.
  local items = {FIELDS[1], version}
  for i = 2, #FIELDS do
    items[2 * i - 1] = FIELDS[i]
    items[2 * i] = ARGV[at]
    at = at + 1
  end
  redis.call('XADD', KEYS[1], version .. '-0', unpack(items))
  logged = redis.call('XADD', KEYS[3], 'MAXLEN', '~', LOG_MAX, '*', unpack(items))
end
redis.call('SET', KEYS[2], version)
if ARCHIVE_EVERY > 0 and math.floor(version / ARCHIVE_EVERY) > math.floor(current / ARCHIVE_EVERY) then
  redis.call('SADD', KEYS[5], ARGV[5])  -- ARGV[5]: the first event's account id (FIELDS[3])
end

if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[4], 'version', version, 'state', ARGV[2])
end
if KEYS[6] then
  redis.call('SET', KEYS[6], ARGV[at], 'EX', ARGV[at + 1])
end
return {'ok', version, logged}
