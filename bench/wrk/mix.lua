-- 60/40 deposit/withdraw mix over ACCOUNTS accounts. Deposits are 2.00 and withdrawals 1.00, so each
-- successful response says by its amount what it was. done() prints the counts and writes the request ids of
-- the successes to $IDS_FILE, so the benchmark can check each one is in the streams exactly once. Every request
-- carries $AUTHORIZATION (a bearer token of the accounts' owner).
local accounts = tonumber(os.getenv("ACCOUNTS") or "100")
local authorization = os.getenv("AUTHORIZATION")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  deposits, withdrawals, other = 0, 0, 0
  ids = {}
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
  local id = "acct-" .. (math.random(accounts) - 1)
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = authorization}
  if math.random() < 0.6 then
    return wrk.format("POST", "/accounts/" .. id .. "/deposits", headers, '{"amount":"2.00"}')
  end
  return wrk.format("POST", "/accounts/" .. id .. "/withdrawals", headers, '{"amount":"1.00"}')
end

function response(status, headers, body)
  if status == 200 then
    ids[#ids + 1] = headers["X-Request-Id"]
    if body:find('"amount":"2.00"', 1, true) then deposits = deposits + 1 else withdrawals = withdrawals + 1 end
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local d, w, o = 0, 0, 0
  local out = assert(io.open(os.getenv("IDS_FILE"), "w"))
  for _, thread in ipairs(threads) do
    for _, id in ipairs(thread:get("ids")) do out:write(id, "\n") end
    d = d + thread:get("deposits")
    w = w + thread:get("withdrawals")
    o = o + thread:get("other")
  end
  out:close()
  io.write(string.format('RESULT {"deposits": %d, "withdrawals": %d, "other": %d, "p50_us": %d, "p99_us": %d, "requests": %d, "errors": %d}\n',
    d, w, o, latency:percentile(50), latency:percentile(99), summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
