-- wrk script: POST /rest/v1/personer, rotating through many different bodies of random ids
-- (so no cache can flatter the figure). Bodies are read from the file in KRR_BODIES, one
-- JSON request body per line; the token comes from KRR_TOKEN.
--
--   python3 tools/make-bodies.py register.jsonl 3000 1000 > bodies.txt
--   KRR_BODIES=bodies.txt KRR_TOKEN=$(krr token ...) \
--     wrk -t2 -c4 -d30s --latency -s tools/wrk-personer.lua http://127.0.0.1:8080
local bodies = {}
local n = 0
local counter = 0

function init(args)
  for line in io.lines(os.getenv("KRR_BODIES")) do
    n = n + 1
    bodies[n] = line
  end
  -- Each thread starts at a different place in the list.
  counter = math.random(n)
  wrk.method = "POST"
  wrk.path = "/rest/v1/personer"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("KRR_TOKEN")
end

function request()
  counter = counter % n + 1
  return wrk.format(nil, nil, nil, bodies[counter])
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. "\n")
  end
end
