-- GET each path of the file named by BENCH_PATHS (one per line) in turn, each thread
-- starting at its own place in the list. Requests are prebuilt in init().
dofile(os.getenv("BENCH_WRK_DIR") .. "/summary.lua")

local reqs = {}
local n = 0
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  for line in io.lines(os.getenv("BENCH_PATHS")) do
    if line ~= "" then
      reqs[#reqs + 1] = wrk.format("GET", line)
    end
  end
  n = (id * 7) % #reqs
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

done = bench_summary
