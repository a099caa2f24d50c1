-- wrk script of the benchmark's introspection rounds (bench/run):
--   wrk -t1 -c32 -d8s -s bench/introspect.lua http://127.0.0.1:PORT/token/introspect -- BASIC TOKEN
-- where BASIC is the base64 of "client_id:client_secret" (client_secret_basic)
-- of the client introspecting, and TOKEN the access token it introspects.
--
-- Every request is POST <path> with the body token=TOKEN (RFC 7662 §2.1),
-- built once in init().  An answer counts only if it is a 200 that says
-- "active":true (the token is live and the caller may see it): an inactive
-- answer costs a server less and would flatter it.  Any other answer is
-- counted (the first one's status and body are kept), and done() prints
-- one machine-readable line:
--   BENCH_RESULT {"requests":..,"duration_us":..,"non200":..,"inactive":..,...}
-- With BENCH_RATE set, requests go at that rate (result.lua's pacing).

local result = dofile(string.match(debug.getinfo(1, "S").source, "^@(.-)[^/]*$") .. "result.lua")

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local req

function init(args)
   local basic, token = args[1], args[2]
   if basic == nil or basic == "" or token == nil or token == "" then
      error("introspect.lua: pass the Basic credentials and the token after --")
   end
   if string.find(token, "[^%w%-%._~]") then
      error("introspect.lua: the token must be form-safe (unreserved characters only)")
   end
   req = wrk.format("POST", nil, {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["Authorization"] = "Basic " .. basic,
   }, "token=" .. token)
   non200 = 0
   inactive = 0
   first_status = 0
   first_body = ""
   result.init_pacing()
end

function request()
   result.sent()
   return req
end

function response(status, headers, body)
   result.answered()
   if status ~= 200 then
      non200 = non200 + 1
      result.keep_first(status, body)
   elseif not string.find(body, '"active":true', 1, true) then
      inactive = inactive + 1
      result.keep_first(status, body)
   end
end

if result.paced then
   delay = result.delay
end

function done(summary, latency, requests)
   result.write(summary, latency, threads, {
      { "non200", result.sum(threads, "non200") },
      { "inactive", result.sum(threads, "inactive") },
      { "unexpected", result.sum(threads, "non200") + result.sum(threads, "inactive") },
   })
end
