-- wrk script: POST /v1/verify with a token picked at random from tokens.txt for every request.
-- Usage: wrk -s bench/verify.lua ... (TOKENS_FILE=path, default bench/out/tokens.txt)
local tokens = {}
local file = os.getenv("TOKENS_FILE") or "bench/out/tokens.txt"
for line in io.lines(file) do
  tokens[#tokens + 1] = line
end
math.randomseed(os.time())

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  local t = tokens[math.random(#tokens)]
  return wrk.format(nil, "/v1/verify", nil, '{"token":"' .. t .. '","client_ip":"127.0.0.1"}')
end

done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\":%d,\"rps\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"non2xx\":%d,\"errors\":%d}\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
