"""The queue the API and the workers share in Redis: request records, the job store and its Lua scripts, RQ
dispatch, admission, and housekeeping (the reaper and retention). Torch-free."""
