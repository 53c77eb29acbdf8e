-- wrk script: POSTs batches of JSON readings to citygate's intake.
--   KEY      device key (required)
--   DATASET  dataset id (default traffic-counts)
--   BATCH    readings per request (default 100)
-- Each thread builds its own body of BATCH traffic readings from BATCH distinct sensors.

local key = os.getenv("KEY") or error("set KEY to a device key")
local dataset = os.getenv("DATASET") or "traffic-counts"
local batch = tonumber(os.getenv("BATCH") or "100")
local thread_no = 0

function setup(thread)
  thread:set("id", thread_no)
  thread_no = thread_no + 1
end

function init(args)
  local parts = {}
  for i = 0, batch - 1 do
    parts[#parts + 1] = string.format(
      '{"sensor_id":"tc-%02d-%04d","lat":55.%04d,"lon":12.%04d,"seq":%d,"fields":{"vehicle_count":%d,"mean_speed":%d.5}}',
      id, i, 6700 + i % 97, 5600 + i % 89, i, i % 120, 20 + i % 50)
  end
  wrk.method = "POST"
  wrk.path = "/v1/datasets/" .. dataset .. "/readings"
  wrk.body = "[" .. table.concat(parts, ",") .. "]"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end

local non204 = 0
function response(status, headers, body)
  if status ~= 204 then
    non204 = non204 + 1
    if non204 <= 3 then
      io.stderr:write("status " .. status .. ": " .. body .. "\n")
    end
  end
end
