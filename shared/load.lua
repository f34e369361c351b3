-- Everything a command needs from one account, in one round trip: the latest snapshot, every event after
-- it, and (when the request carries an Idempotency-Key) the idempotency record.
--
-- KEYS[1] account stream    KEYS[2] snapshot    KEYS[3] idempotency record (optional)
-- Reply: {snapshot state or false, {entries after the snapshot}, record or false}, the record being {value}
-- (a string: the fingerprint's 32 bytes, then the result) or, for one written before 2026-12-05 as a hash,
-- {fingerprint, result}.

local snapshot = redis.call('HMGET', KEYS[2], 'version', 'state')
local start = '-'
if snapshot[1] then
  start = (tonumber(snapshot[1]) + 1) .. '-0'
end
local entries = redis.call('XRANGE', KEYS[1], start, '+')
local record = false
if KEYS[3] then
  local value = redis.pcall('GET', KEYS[3])
  if type(value) == 'table' and value.err then  -- WRONGTYPE: a hash, from before records were strings
    local prior = redis.call('HMGET', KEYS[3], 'fingerprint', 'result')
    if prior[1] then record = prior end
  elseif value then
    record = {value}
  end
end
return {snapshot[2], entries, record}
