-- wrk script of the token benchmark (bench/run):
--   wrk -t1 -c32 -d8s -s bench/token.lua http://127.0.0.1:PORT/token -- BASIC
--   wrk -t1 -c32 -d8s -s bench/token.lua http://127.0.0.1:PORT/token -- @FILE
-- where BASIC is the base64 of "client_id:client_secret" (client_secret_basic),
-- and FILE holds one such value a line, for many clients (the population
-- section).
--
-- Every request is POST /token, grant_type=client_credentials&scope=read,
-- with the next client's credentials: request n uses client (n mod clients)
-- + 1, whatever connection it goes out on.  The requests are built once, in
-- init().  Answers other than 200 are counted (the first one's status and
-- body are kept), and done() prints one machine-readable line:
--   BENCH_RESULT {"requests":..,"duration_us":..,"non200":..,"clients":..,...,"p50_us":..,"p99_us":..}

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local reqs = {}
local next_req = 0

local function add_request(basic)
   table.insert(reqs, wrk.format("POST", nil, {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["Authorization"] = "Basic " .. basic,
   }, "grant_type=client_credentials&scope=read"))
end

function init(args)
   local given = args[1]
   if given == nil or given == "" then
      error("token.lua: pass the Basic credentials, or @FILE of them, after --")
   end
   if string.sub(given, 1, 1) == "@" then
      local path = string.sub(given, 2)
      for line in io.lines(path) do
         local basic = string.match(line, "^%s*(%S+)%s*$")
         if basic then
            add_request(basic)
         end
      end
      if #reqs == 0 then
         error("token.lua: no credentials in " .. path)
      end
   else
      add_request(given)
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
