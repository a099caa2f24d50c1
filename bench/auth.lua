-- wrk script of the client authentication section (bench/run --auth-cases):
--   wrk -t1 -c32 -d8s -s bench/auth.lua http://127.0.0.1:PORT/token -- FILE THREADS
-- FILE holds one request a line, three fields separated by a tab:
--   AUTHORIZATION <tab> DPOP <tab> BODY
-- where "-" means "no such header".  Assertions and DPoP proofs are one-time
-- (the server records their jti and refuses a replay), so every line is sent
-- once: thread k of THREADS sends lines k+1, k+1+THREADS, ... in order,
-- whatever connection they go out on.  Past the end of its share a thread
-- starts again at its first line and counts every such request as
-- "exhausted" (the server will refuse them as replays: they count as non-200
-- too).  Answers other than 200 are counted (the first one's status and body
-- are kept), and done() prints one machine-readable line:
--   BENCH_RESULT {"requests":..,"duration_us":..,"non200":..,"exhausted":..,...}

-- the BENCH_RESULT line and the first unexpected answer: result.lua, beside this
local result = dofile(string.match(debug.getinfo(1, "S").source, "^@(.-)[^/]*$") .. "result.lua")

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

local reqs = {}
local next_req = 0

local function field(value)
   if value == "-" then
      return nil
   end
   return value
end

function init(args)
   local path, nthreads = args[1], tonumber(args[2] or "1")
   if path == nil or path == "" then
      error("auth.lua: pass FILE (and THREADS) after --")
   end
   local index = thread_index or 0
   local n = 0
   for line in io.lines(path) do
      if n % nthreads == index then
         local auth, dpop, body = string.match(line, "^([^\t]*)\t([^\t]*)\t([^\t]*)$")
         if body == nil then
            error("auth.lua: a line of " .. path .. " is not AUTHORIZATION<tab>DPOP<tab>BODY")
         end
         local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
         headers["Authorization"] = field(auth)
         headers["DPoP"] = field(dpop)
         table.insert(reqs, wrk.format("POST", nil, headers, body))
      end
      n = n + 1
   end
   if #reqs == 0 then
      error("auth.lua: no requests in " .. path)
   end
   lines = #reqs
   exhausted = 0
   non200 = 0
   first_status = 0
   first_body = ""
end

function request()
   next_req = next_req + 1
   if next_req > #reqs then
      exhausted = exhausted + 1
      return reqs[(next_req - 1) % #reqs + 1]
   end
   return reqs[next_req]
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
      result.keep_first(status, body)
   end
end

function done(summary, latency, requests)
   result.write(summary, latency, threads, {
      { "non200", result.sum(threads, "non200") },
      { "lines", result.sum(threads, "lines") },
      { "exhausted", result.sum(threads, "exhausted") },
   })
end
