-- POST /events with valid events of all three types and varying user_id.
-- Requests are prebuilt in init() so the load generator spends its CPU on sending.
dofile(os.getenv("BENCH_WRK_DIR") .. "/summary.lua")

local reqs = {}
local n = 0

function init(args)
  local id = tonumber(os.getenv("BENCH_THREAD_SALT") or "0") + math.random(1, 1000000)
  local headers = {["Content-Type"] = "application/json"}
  for i = 1, 1024 do
    local user = string.format("user-%d-%d", id, i)
    local body
    if i % 3 == 0 then
      body = string.format('{"user_id":"%s","event_type":"click","payload":' ..
        '{"element_id":"buy-%d","text":"Buy now","xpath":"/html/body/div[2]/button"}}', user, i)
    elseif i % 3 == 1 then
      body = string.format('{"user_id":"%s","event_type":"view","payload":' ..
        '{"url":"https://shop.example/products/%d","title":"Product %d"}}', user, i, i)
    else
      body = string.format('{"user_id":"%s","event_type":"location","payload":' ..
        '{"latitude":%.4f,"longitude":%.4f,"accuracy":12.5}}', user, (i % 180) - 89.5, (i % 360) - 179.5)
    end
    reqs[i] = wrk.format("POST", "/events", headers, body)
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

done = bench_summary
