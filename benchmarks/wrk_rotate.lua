-- wrk script of benchmarks/wrk_load.py: send prepared requests in turn, count statuses, print JSON.
--
-- Argument (after `--`): a file with one request per line, `METHOD<TAB>PATH<TAB>BODY` (BODY may be
-- empty; a non-empty one is sent as application/json). Each wrk thread starts at its own offset in
-- the list. done() prints one line `WRK_JSON {...}` with wrk's latency percentiles (microseconds,
-- over every completed response), request and error counts, the count of each HTTP status, and
-- the latency of every 200 answer (`ok_latency_us`).
--
-- With the environment variable MD2PR_WRK_HONOUR_RETRY_AFTER=1 each connection is a client that
-- honours Retry-After: after a 429 it waits that many seconds before its next request (wrk's
-- delay(); the next request's clock starts when it is sent). Without it a refused client asks
-- again at once (a retry storm).
--
-- That last list needs one connection per thread (wrk_load.py runs `--threads` = `--connections`):
-- a thread's request() and response() then alternate, so the time between them is one request's.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } md2pr_timespec;
  int clock_gettime(int clock_id, md2pr_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("md2pr_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1e6 + tonumber(clock.tv_nsec) / 1e3
end

local threads = {}
local honour_retry_after = os.getenv("MD2PR_WRK_HONOUR_RETRY_AFTER") == "1"
pause_ms = 0

if honour_retry_after then
  -- defined only then: wrk arms a timer before every request of a script that has delay()
  function delay()
    local ms = pause_ms
    pause_ms = 0
    return ms
  end
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

function init(args)
  prepared = {}
  statuses = {}
  retry_after_missing = 0
  ok_latency = {}
  sent_at = nil
  for line in io.lines(args[1]) do
    local method, path, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    if method then
      local headers = {}
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json"
      end
      prepared[#prepared + 1] = wrk.format(method, path, headers, body)
    end
  end
  if #prepared == 0 then
    error("no requests in " .. args[1])
  end
  position = ((thread_no or 1) - 1) * 7919 % #prepared
end

function request()
  position = position % #prepared + 1
  sent_at = now_us()
  return prepared[position]
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 200 and sent_at ~= nil then
    ok_latency[#ok_latency + 1] = math.floor(now_us() - sent_at + 0.5)
  end
  sent_at = nil
  if status == 429 then
    local retry = headers["Retry-After"] or headers["retry-after"]
    if retry == nil then
      retry_after_missing = retry_after_missing + 1
    elseif honour_retry_after then
      pause_ms = math.floor((tonumber(retry) or 0) * 1000)
    end
  end
end

function done(summary, latency, requests)
  local merged = {}
  local missing = 0
  local ok = {}
  for _, thread in ipairs(threads) do
    for _, us in ipairs(thread:get("ok_latency")) do
      ok[#ok + 1] = tostring(us)
    end
    for key, count in pairs(thread:get("statuses")) do
      merged[key] = (merged[key] or 0) + count
    end
    missing = missing + thread:get("retry_after_missing")
  end
  local parts = {}
  for key, count in pairs(merged) do
    parts[#parts + 1] = string.format('"%s": %d', key, count)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "p50": %d, "p90": %d, "p95": %d, "p99": %d}, ' ..
    '"statuses": {%s}, "retry_after_missing": %d, "ok_latency_us": [%s]}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    table.concat(parts, ", "), missing, table.concat(ok, ",")))
end
