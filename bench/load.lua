-- wrk script: send pre-built raw requests from a corpus file (see bench/corpus.py), each at most once.
--
--   wrk -t1 -c32 -d10s -s bench/load.lua http://127.0.0.1:PORT -- CORPUS NTHREADS [QUOTA MARKER]
--
-- Thread i sends records i, i+N, i+2N, ... so no two threads share a request. When a thread runs out it starts
-- over (counted as "wrapped": the harness sizes corpora so that it does not happen where it matters). With
-- QUOTA > 0 each thread stops after QUOTA/NTHREADS responses and creates the file MARKER.<thread id>; wrk
-- itself sleeps out its -d, so the harness interrupts it (SIGINT) once every marker exists. Only then is a
-- response() callback installed: wrk parses every response's headers into Lua tables when one exists.
-- done() prints one JSON line for the harness.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   table.insert(threads, thread)
   next_id = next_id + 1
end

local reqs = {}
local pos = 0
local wrapped = 0
local share = 0
local seen = 0
local marker = nil

local function count_response(status, headers, body)
   seen = seen + 1
   if seen == share then
      local f = io.open(marker .. "." .. id, "w")
      if f then f:close() end
      wrk.thread:stop()
   end
end

function init(args)
   local path, nthreads, quota = args[1], tonumber(args[2]), tonumber(args[3] or "0")
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   local p, i = 1, 0
   while p <= #data do
      local nl = data:find("\n", p, true)
      local len = tonumber(data:sub(p, nl - 1))
      if i % nthreads == id then
         reqs[#reqs + 1] = data:sub(nl + 1, nl + len)
      end
      i = i + 1
      p = nl + 1 + len
   end
   if quota > 0 then
      share = math.ceil(quota / nthreads)
      marker = args[4]
      response = count_response
   end
end

function request()
   pos = pos + 1
   if pos > #reqs then
      pos = 1
      wrapped = wrapped + 1
      wrk.thread:set("wrapped", wrapped)
   end
   return reqs[pos]
end

function done(summary, latency, requests)
   local wraps = 0
   for _, t in ipairs(threads) do
      wraps = wraps + (t:get("wrapped") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      '{"duration_us":%d,"requests":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
      '"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"wrapped":%d}\n',
      summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean, wraps))
end
