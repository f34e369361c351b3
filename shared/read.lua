-- One page of an account's events, as a script so the reply stays the flat [id, [field, value, ...]] list
-- that stream_codec.decode_flat reads (redis-py would turn a plain XRANGE reply into a dict per entry).
--
-- KEYS[1] account stream    ARGV[1] first version    ARGV[2] at most this many entries (0: no limit)

if ARGV[2] == '0' then
  return redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', '+')
end
return redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
