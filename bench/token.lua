-- wrk script of the token benchmark (bench/run):
--   wrk -t1 -c32 -d8s -s bench/token.lua http://127.0.0.1:PORT/token -- BASIC
--   wrk -t1 -c32 -d8s -s bench/token.lua http://127.0.0.1:PORT/token -- @FILE
-- where BASIC is the base64 of "client_id:client_secret" (client_secret_basic),
-- and FILE holds one such value a line, for many clients (the population
-- section).  With BENCH_RATE set, requests go at that rate (result.lua's
-- pacing).
--
-- Every request is POST /token, grant_type=client_credentials&scope=read,
-- with the next client's credentials: request n uses client (n mod clients)
-- + 1, whatever connection it goes out on.  The requests are built once, in
-- init().  Answers other than 200 are counted (the first one's status and
-- body are kept), and done() prints one machine-readable line:
--   BENCH_RESULT {"requests":..,"duration_us":..,"non200":..,"clients":..,...,"p50_us":..,"p99_us":..}

-- the BENCH_RESULT line and the first unexpected answer: result.lua, beside this
local result = dofile(string.match(debug.getinfo(1, "S").source, "^@(.-)[^/]*$") .. "result.lua")

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
   result.init_pacing()
end

function request()
   result.sent()
   next_req = next_req % #reqs + 1
   return reqs[next_req]
end

if result.paced then
   delay = result.delay
end

function response(status, headers, body)
   result.answered()
   if status ~= 200 then
      non200 = non200 + 1
      result.keep_first(status, body)
   end
end

function done(summary, latency, requests)
   local count = 0
   for _, thread in ipairs(threads) do
      count = math.max(count, thread:get("clients") or 0)
   end
   result.write(summary, latency, threads, {
      { "non200", result.sum(threads, "non200") },
      { "clients", count },
   })
end
