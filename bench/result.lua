-- What bench/run's wrk scripts (token.lua, auth.lua, register.lua) share,
-- loaded by each with dofile from beside it: the first unexpected answer of
-- each thread, and the one machine-readable line that done() prints:
--   BENCH_RESULT {"requests":..,"duration_us":..,"bytes":..,<the script's counts>,
--                 "first_bad_status":..,"first_bad_body":"..","errors":{..},
--                 "p50_us":..,"p90_us":..,"p99_us":..,"max_us":..,"mean_us":..}

local result = {}

-- Pacing: with the environment variable BENCH_RATE set (requests a second,
-- all of wrk's threads together; BENCH_THREADS: wrk's -t, 1 by default),
-- requests go out at that constant rate instead of as fast as the server
-- answers (wrk2's way, which Debian does not package), and every answer's
-- latency is also counted from when its request was due, not when it went
-- out: a server that stalls is charged for the requests that waited to be
-- sent meanwhile (no coordinated omission).  Each wrk thread keeps its own
-- schedule, due times 1/rate x threads apart from its first request; wrk's
-- delay() (whole milliseconds) holds each connection until its next due
-- time, and the answers are matched to the due times in order (one
-- request in flight per connection, answered about in the order sent).
-- done() then adds paced_p50_us, paced_p90_us, paced_p99_us and
-- paced_max_us to the BENCH_RESULT line, and paced_hist: every latency
-- counted in buckets of a 200th of e (about half a percent wide), as
-- [bucket, count] pairs, bucket = floor(ln(us) * 200), so that the rounds of
-- a phase can be pooled into one distribution (bench/histogram.py).  A script paces only if it sets
-- `delay = result.delay` when result.paced (wrk checks for delay() once, at
-- load: a closed-loop run must not have one).
local rate = tonumber(os.getenv("BENCH_RATE") or "")
result.paced = rate ~= nil and rate > 0
local now_us
if result.paced then
   local ffi = require("ffi")
   ffi.cdef[[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clock_id, bench_timespec *tp);
   ]]
   local ts = ffi.new("bench_timespec")
   now_us = function()
      ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
   end
end
local interval, start, delayed, sent, head, tail, starts

-- From the script's init(): this thread's schedule.
function result.init_pacing()
   paced_lat = {}
   if not result.paced then
      return
   end
   interval = (tonumber(os.getenv("BENCH_THREADS") or "") or 1) / rate * 1e6
   delayed, sent, head, tail, starts = 0, 0, 1, 0, {}
end

-- wrk's delay(): milliseconds until this connection's next due time.
function result.delay()
   local now = now_us()
   start = start or now
   local due = start + delayed * interval
   delayed = delayed + 1
   local wait = (due - now) / 1000
   return wait > 0 and math.floor(wait) or 0
end

-- From request(): when this request was due (or sent, if later than due
-- only by delay()'s rounding down).
function result.sent()
   if not (result.paced and starts) then
      return
   end
   local now = now_us()
   start = start or now
   local due = start + sent * interval
   sent = sent + 1
   tail = tail + 1
   starts[tail] = due < now and due or now
end

-- From response(): the latency of the oldest request unanswered.
function result.answered()
   if not (result.paced and starts) or head > tail then
      return
   end
   local began = starts[head]
   starts[head] = nil
   head = head + 1
   paced_lat[#paced_lat + 1] = now_us() - began
end

local function paced_figures(threads)
   local all = {}
   for _, thread in ipairs(threads) do
      for _, v in ipairs(thread:get("paced_lat") or {}) do
         all[#all + 1] = v
      end
   end
   if #all == 0 then
      return ""
   end
   table.sort(all)
   local function at(q)
      return all[math.max(1, math.ceil(q * #all))]
   end
   -- sorted, so each bucket's values are together
   local pairs_, bucket, count = {}, nil, 0
   for _, v in ipairs(all) do
      local b = math.floor(math.log(math.max(v, 1)) * 200)
      if b ~= bucket then
         if bucket then
            pairs_[#pairs_ + 1] = string.format("[%d,%d]", bucket, count)
         end
         bucket, count = b, 0
      end
      count = count + 1
   end
   pairs_[#pairs_ + 1] = string.format("[%d,%d]", bucket, count)
   return string.format('"paced_p50_us":%d,"paced_p90_us":%d,"paced_p99_us":%d,"paced_max_us":%d,' ..
      '"paced_hist":[%s],',
      at(0.50), at(0.90), at(0.99), all[#all], table.concat(pairs_, ","))
end

-- Keeps the first unexpected answer of this thread (its status, and the
-- first 300 bytes of its body) in the globals first_status and first_body,
-- which init() sets to 0 and "".
function result.keep_first(status, body)
   if first_status == 0 then
      first_status = status
      first_body = string.sub(body or "", 1, 300)
   end
end

-- The sum over the threads of the global `name` of each.
function result.sum(threads, name)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (thread:get(name) or 0)
   end
   return total
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

-- Prints the BENCH_RESULT line, with `counts` ({name, whole number} pairs,
-- in order) after the bytes, and the first thread's first unexpected answer.
function result.write(summary, latency, threads, counts)
   local status, body = 0, ""
   for _, thread in ipairs(threads) do
      local s = thread:get("first_status") or 0
      if status == 0 and s ~= 0 then
         status = s
         body = thread:get("first_body") or ""
      end
   end
   local own = ""
   for _, pair in ipairs(counts) do
      own = own .. string.format('"%s":%d,', pair[1], pair[2])
   end
   if result.paced then
      own = own .. paced_figures(threads)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,%s' ..
      '"first_bad_status":%d,"first_bad_body":%s,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes, own,
      status, json_string(body),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end

return result
