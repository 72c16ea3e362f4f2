-- POST /events/batch with BENCH_BATCH events per request (valid, mixed types).
dofile(os.getenv("BENCH_WRK_DIR") .. "/summary.lua")

local reqs = {}
local n = 0

function init(args)
  local size = tonumber(os.getenv("BENCH_BATCH") or "100")
  local id = math.random(1, 1000000)
  local headers = {["Content-Type"] = "application/json"}
  for r = 1, 8 do
    local events = {}
    for i = 1, size do
      local user = string.format("user-%d-%d-%d", id, r, i % 97)
      if i % 3 == 0 then
        events[i] = string.format('{"user_id":"%s","event_type":"click","payload":' ..
          '{"element_id":"buy-%d","text":"Buy now"}}', user, i)
      elseif i % 3 == 1 then
        events[i] = string.format('{"user_id":"%s","event_type":"view","payload":' ..
          '{"url":"https://shop.example/products/%d","title":"Product %d"}}', user, i, i)
      else
        events[i] = string.format('{"user_id":"%s","event_type":"location","payload":' ..
          '{"latitude":%.4f,"longitude":%.4f}}', user, (i % 180) - 89.5, (i % 360) - 179.5)
      end
    end
    reqs[r] = wrk.format("POST", "/events/batch", headers,
      '{"events":[' .. table.concat(events, ",") .. ']}')
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

done = bench_summary
