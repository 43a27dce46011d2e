-- POST the body in the file named by BODY_FILE on every request, as CONTENT_TYPE (JSON by default).
wrk.method = "POST"
local content_type = os.getenv("CONTENT_TYPE")
if content_type == nil or content_type == "" then content_type = "application/json" end
wrk.headers["Content-Type"] = content_type
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = file:read("*a")
file:close()
