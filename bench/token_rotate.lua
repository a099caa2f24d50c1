-- wrk script of the population benchmark (bench/run): token.lua's request
-- for many clients, round-robin.
--   wrk -t1 -c32 -d8s -s bench/token_rotate.lua http://127.0.0.1:PORT/token -- FILE
-- where FILE holds one client's Basic credentials a line: the base64 of
-- "client_id:client_secret" (client_secret_basic).
--
-- Every request is POST /token, grant_type=client_credentials&scope=read,
-- with the next client's credentials: request n uses line (n mod lines) + 1,
-- whatever connection it goes out on.  The requests are built once, in
-- init().  Answers other than 200 are counted (the first one's status and
-- body are kept), and done() prints the same BENCH_RESULT line as token.lua,
-- with "clients": the number of clients rotated over.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local reqs = {}
local next_req = 0

function init(args)
   local path = args[1]
   if path == nil or path == "" then
      error("token_rotate.lua: pass the file of Basic credentials after --")
   end
   local body = "grant_type=client_credentials&scope=read"
   for line in io.lines(path) do
      local basic = string.match(line, "^%s*(%S+)%s*$")
      if basic then
         table.insert(reqs, wrk.format("POST", nil, {
            ["Content-Type"] = "application/x-www-form-urlencoded",
            ["Authorization"] = "Basic " .. basic,
         }, body))
      end
   end
   if #reqs == 0 then
      error("token_rotate.lua: no credentials in " .. path)
   end
   clients = #reqs
   non200 = 0
   first_status = 0
   first_body = ""
end

function request()
   next_req = next_req % #reqs + 1
   return reqs[next_req]
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
      if first_status == 0 then
         first_status = status
         first_body = string.sub(body or "", 1, 300)
      end
   end
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local bad, status, body, count = 0, 0, "", 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non200") or 0)
      count = math.max(count, thread:get("clients") or 0)
      local s = thread:get("first_status") or 0
      if status == 0 and s ~= 0 then
         status = s
         body = thread:get("first_body") or ""
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"non200":%d,"clients":%d,' ..
      '"first_bad_status":%d,"first_bad_body":%s,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes, bad, count,
      status, json_string(body),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
