-- Everything a command needs from one account, in one round trip: the latest snapshot, every event after
-- it, and (when the request carries an Idempotency-Key) the idempotency record.
--
-- KEYS[1] account stream    KEYS[2] snapshot    KEYS[3] idempotency record (optional)
-- Reply: {snapshot state or false, {entries after the snapshot}, {fingerprint, result} or false}

local snapshot = redis.call('HMGET', KEYS[2], 'version', 'state')
local start = '-'
if snapshot[1] then
  start = (tonumber(snapshot[1]) + 1) .. '-0'
end
local entries = redis.call('XRANGE', KEYS[1], start, '+')
local record = false
if KEYS[3] then
  record = redis.call('HMGET', KEYS[3], 'fingerprint', 'result')
end
return {snapshot[2], entries, record}
