-- A page of one account's events and how far its history is archived, in one round trip (consistent with
-- each other: the archiver's trim is one script too).
--
-- KEYS[1] account stream    KEYS[2] snapshot
-- ARGV[1] the first entry id wanted    ARGV[2] the most entries wanted, or "" for all
-- Reply: {{the last archived version, the first version of the last archived segment} (false for none),
--         {entries}}

local entries
if ARGV[2] == '' then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+')
else
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {redis.call('HMGET', KEYS[2], 'archived', 'segment'), entries}
