-- Counts one request against a key's limits for a model, for every instance at once: all
-- checked, then counted only if all pass. KEYS: the minute's requests (sorted set), the day's
-- count, the minute's tokens (sorted set of "<unique>:<tokens>"). ARGV: now (ms), requests per
-- minute, requests per day, tokens per minute (0: no such limit), ms until the day ends, a
-- unique member. Returns 0 when counted, else the milliseconds until the request would fit.
local now = tonumber(ARGV[1])
local per_minute, per_day, tokens_per_minute = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local wait = 0
if per_minute > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= per_minute then
    local oldest = redis.call('ZRANGE', KEYS[1], n - per_minute, n - per_minute, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + 60000 - now)
  end
end
if per_day > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= per_day then wait = math.max(wait, tonumber(ARGV[5])) end
end
if tokens_per_minute > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60000)
  local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  local total = 0
  for i = 1, #entries, 2 do total = total + tonumber(string.match(entries[i], ':(%d+)$')) end
  if total >= tokens_per_minute then
    for i = 1, #entries, 2 do
      total = total - tonumber(string.match(entries[i], ':(%d+)$'))
      if total < tokens_per_minute then
        wait = math.max(wait, tonumber(entries[i + 1]) + 60000 - now)
        break
      end
    end
  end
end
if wait > 0 then return math.max(wait, 1) end
if per_minute > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[1], 60000)
end
if per_day > 0 then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], math.max(tonumber(ARGV[5]), 1000))
end
return 0
