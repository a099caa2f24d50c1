-- What bench/run's wrk scripts (token.lua, auth.lua, register.lua) share,
-- loaded by each with dofile from beside it: the first unexpected answer of
-- each thread, and the one machine-readable line that done() prints:
--   BENCH_RESULT {"requests":..,"duration_us":..,"bytes":..,<the script's counts>,
--                 "first_bad_status":..,"first_bad_body":"..","errors":{..},
--                 "p50_us":..,"p90_us":..,"p99_us":..,"max_us":..,"mean_us":..}

local result = {}

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
