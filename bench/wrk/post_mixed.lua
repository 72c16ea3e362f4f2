-- POST /events with what real traffic looks like to an operator: mostly valid events of
-- all three types, and now and then a refused request of each kind (400, 413, 415, 422)
-- and an Idempotency-Key retry. Prebuilt in init(); one cycle is 600 requests.
dofile(os.getenv("BENCH_WRK_DIR") .. "/summary.lua")

local reqs = {}
local n = 0

function init(args)
  local id = math.random(1, 1000000)
  local json = {["Content-Type"] = "application/json"}
  local big = string.rep("x", 70 * 1024)
  for i = 1, 600 do
    local user = string.format("user-%d-%d", id, i)
    local body
    local headers = json
    if i % 3 == 0 then
      body = string.format('{"user_id":"%s","event_type":"click","payload":' ..
        '{"element_id":"buy-%d","text":"Buy now"}}', user, i)
    elseif i % 3 == 1 then
      body = string.format('{"user_id":"%s","event_type":"view","payload":' ..
        '{"url":"https://shop.example/products/%d","title":"Product %d"}}', user, i, i)
    else
      body = string.format('{"user_id":"%s","event_type":"location","payload":' ..
        '{"latitude":%.4f,"longitude":%.4f}}', user, (i % 180) - 89.5, (i % 360) - 179.5)
    end
    if i % 50 == 7 then         -- invalid: no payload
      body = string.format('{"user_id":"%s","event_type":"view"}', user)
    elseif i % 150 == 11 then   -- unsupported media type
      headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
      body = "user_id=" .. user
    elseif i == 599 then        -- too large
      body = '{"user_id":"' .. big .. '"}'
    elseif i % 100 == 13 then   -- a retry with a key: 202 the first time, replays after
      headers = {["Content-Type"] = "application/json",
                 ["Idempotency-Key"] = string.format("key-%d-%d", id, i)}
    elseif i % 100 == 14 then   -- the same key with another body: 422
      headers = {["Content-Type"] = "application/json",
                 ["Idempotency-Key"] = string.format("key-%d-%d", id, i - 1)}
    end
    reqs[i] = wrk.format("POST", "/events", headers, body)
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

done = bench_summary
