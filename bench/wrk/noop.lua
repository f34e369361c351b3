-- The same request shape as mix.lua (bearer token included) against a route that does nothing: the ceiling of
-- Flask on gunicorn.
local authorization = os.getenv("AUTHORIZATION")

function request()
  return wrk.format("POST", "/noop", {["Content-Type"] = "application/json", ["Authorization"] = authorization},
                    '{"amount":"2.00"}')
end

function done(summary, latency, requests)
  io.write(string.format('RESULT {"deposits": 0, "withdrawals": 0, "other": 0, "p50_us": %d, "p99_us": %d, "requests": %d, "errors": %d}\n',
    latency:percentile(50), latency:percentile(99), summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
