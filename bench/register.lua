-- wrk script of the registration benchmark (bench/run, population section):
--   wrk -t1 -c32 -d8s -s bench/register.lua http://127.0.0.1:PORT/client-reg \
--       -- MASTER_TOKEN [KEEP_PROBABILITY KEEP_FILE [STOP_AFTER]]
--
-- Every request is the same POST /client-reg (RFC 7591) with the JSON body
-- {"client_name": "bench", "scope": "read write"} and the master token as a
-- Bearer token.  Every answer must be 201: the others are counted (the
-- first one's status and body are kept).
--
-- KEEP_PROBABILITY (0 to 1) and KEEP_FILE: each 201 answer is kept with that
-- probability, "client_id<TAB>client_secret" appended to KEEP_FILE, so that
-- bench/run can later pick clients at random from the whole population it
-- registered and get tokens for them.
--
-- STOP_AFTER: send exactly that many registrations, then only GET the
-- discovery document (which registers nothing) until every registration
-- has been answered; then print BENCH_STOPPED and stop.  0 or absent:
-- register until -d runs out.
--
-- done() prints one machine-readable line, as token.lua does:
--   BENCH_RESULT {"requests":..,"duration_us":..,"created":..,"sent":..,
--                 "unexpected":..,"expected":201,...,"p50_us":..,"p99_us":..}
-- created: 201 answers; sent: registrations written to the server, which
-- also counts the (up to one per connection) still in flight when a timed
-- run ends: the server makes those clients too, and nobody reads the answer.
-- (requests and latencies include the few discovery GETs after STOP_AFTER.)

-- the BENCH_RESULT line and the first unexpected answer: result.lua, beside this
local result = dofile(string.match(debug.getinfo(1, "S").source, "^@(.-)[^/]*$") .. "result.lua")

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("first_thread", #threads == 1)
end

local req, idle_req
local keep_probability, keep_file
local stop_after

function init(args)
   local master = args[1]
   if master == nil or master == "" then
      error("register.lua: pass the master token after --")
   end
   keep_probability = tonumber(args[2] or "0") or 0
   if keep_probability > 0 then
      if args[3] == nil or args[3] == "" then
         error("register.lua: KEEP_PROBABILITY needs a KEEP_FILE")
      end
      keep_file = assert(io.open(args[3], "a"))
   end
   stop_after = tonumber(args[4] or "0") or 0
   -- wrk 4 calls request() once on its first thread before it starts, to
   -- check the request (script_verify_request): that one is never sent
   sent = first_thread and -1 or 0
   stopped = false
   created = 0
   kept = 0
   unexpected = 0
   first_status = 0
   first_body = ""
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
   req = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. master,
   }, '{"client_name": "bench", "scope": "read write"}')
   idle_req = wrk.format("GET", "/.well-known/openid-configuration")
end

function request()
   if stop_after > 0 and sent >= stop_after then
      return idle_req
   end
   sent = sent + 1
   return req
end

local function bad(status, body)
   unexpected = unexpected + 1
   result.keep_first(status, body)
end

function response(status, headers, body)
   if status == 201 then
      created = created + 1
      if keep_file ~= nil and math.random() < keep_probability then
         local id = string.match(body, '"client_id"%s*:%s*"([^"]+)"')
         local secret = string.match(body, '"client_secret"%s*:%s*"([^"]+)"')
         if id and secret then
            keep_file:write(id, "\t", secret, "\n")
            keep_file:flush()
            kept = kept + 1
         else
            bad(status, body)
         end
      end
   elseif status ~= 200 or stop_after == 0 then
      -- 200 is the discovery GET once STOP_AFTER registrations were sent
      bad(status, body)
   end
   if stop_after > 0 and not stopped and created + unexpected >= stop_after then
      -- wrk itself waits out -d whatever its threads do: bench/run sends it
      -- SIGINT when it reads this line
      stopped = true
      io.stdout:write("BENCH_STOPPED\n")
      io.stdout:flush()
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   result.write(summary, latency, threads, {
      { "created", result.sum(threads, "created") },
      { "sent", result.sum(threads, "sent") },
      { "kept", result.sum(threads, "kept") },
      { "unexpected", result.sum(threads, "unexpected") },
      { "expected", 201 },
   })
end
