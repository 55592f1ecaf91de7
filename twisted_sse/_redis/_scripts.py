"""
The broker's Lua scripts, and how they are run: ``EVALSHA``, and ``EVAL``
when Redis answers ``NOSCRIPT`` (it restarted, or its scripts were
flushed).  Each script does atomically what must not be split: the epoch
with the write or read that uses it (see :mod:`twisted_sse._redis`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from ._protocol import Arg, Commands, RedisCommandError, Reply

__all__ = [
    "HEADS",
    "IDEMPOTENCY_FIELD",
    "LOG",
    "LOG_FIELD",
    "NAMES",
    "PRESENCE_CHANGES",
    "PRESENCE_READ",
    "PRESENCE_UPDATE",
    "PUBLISH",
    "REFRESH",
    "ROTATE",
    "SCRIPTS",
    "SNAPSHOT",
    "Script",
    "run_script",
]


@frozen
class Script:
    """A Lua script, run by ``EVALSHA`` (``EVAL`` when Redis lost it)."""

    source: str
    sha: str


def script(body: str) -> Script:
    """A script of ``body`` with the epoch helper ``new_epoch()`` before it."""
    source = NEW_EPOCH + body
    return Script(source, hashlib.sha1(source.encode("utf-8")).hexdigest())


#: A new epoch token: Redis's clock in microseconds, in base 36, so that a
#: channel made again (after Redis lost it) never gets its old epoch back.
NEW_EPOCH = """
local function new_epoch()
  local now = redis.call('TIME')
  local n = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
  local text = ''
  repeat
    local d = n % 36
    text = string.sub(digits, d + 1, d + 1) .. text
    n = (n - d) / 36
  until n == 0
  return text
end
"""

#: The first of the publish script's arguments after the TTL when the
#: publish is also written to the publish log (see :data:`LOG`).
LOG_FIELD = "#log"
#: In a publish's ARGV[3] instead of :data:`LOG_FIELD`, on Redis Cluster:
#: no publish log; the new entry's id is ``SPUBLISH``\ ed on the shard
#: channel named as the stream's key.
LIVE_FIELD = "#live"

#: The argument after the publish log's (or the TTL, without a log) when
#: the publish carries an idempotency key (see :data:`PUBLISH`).
IDEMPOTENCY_FIELD = "#idem"

#: Publish: KEYS stream, epoch, and the idempotency key's key when the
#: publish carries one; ARGV MAXLEN, TTL in ms (0: none), then optionally
#: ``#log`` (:data:`LOG_FIELD`), the publish log's key, the channel's name
#: and the log's MAXLEN (or, on Redis Cluster, ``#live``,
#: :data:`LIVE_FIELD`), then with an idempotency key ``#idem``
#: (:data:`IDEMPOTENCY_FIELD`), its TTL in ms and the event's digest, then
#: the fields.  Returns ``<epoch>:<entry id>``; or, when the idempotency
#: key's key exists, adds nothing and returns {its value}: ``<digest>
#: <epoch>:<entry id>`` of the publish that set it (with ``PX``, in the same
#: script as its ``XADD``, so that repeats on any process, at once or not,
#: see it).  The first entry of an epoch (``m`` is set until
#: it is written) carries the epoch first, for the readers of the channel
#: (see the module docstring).  The log entry (fields ``c`` the channel,
#: ``e`` the epoch, ``i`` the entry id) is written in the same script, so
#: that whoever sees the entry can see its log entry; a log key that is no
#: stream (another program's) does not fail the publish.
PUBLISH = script("""
local stream, meta, once = KEYS[1], KEYS[2], KEYS[3]
local ttl = tonumber(ARGV[2])
local logged = ARGV[3] == '#log'
local live = ARGV[3] == '#live'
local fields = logged and 7 or (live and 4 or 3)
local once_ttl, digest
if once and ARGV[fields] == '#idem' then
  once_ttl, digest = ARGV[fields + 1], ARGV[fields + 2]
  fields = fields + 3
  local seen = redis.call('GET', once)
  if seen then return {seen} end
else
  once = nil
end
local known = redis.call('HMGET', meta, 'e', 'm')
local epoch = known[1]
local id
if epoch and not known[2] then
  id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, fields))
else
  if epoch then
    redis.call('HDEL', meta, 'm')
  else
    epoch = new_epoch()
    redis.call('HSET', meta, 'e', epoch)
  end
  -- A stream made again (Redis lost it) must start after every id the old
  -- one gave out, or a reader still waiting after the old last id would
  -- never see it.  Those ids are of this millisecond or before; in this
  -- millisecond, their sequence numbers are small, or (a stream made
  -- again earlier in the same millisecond) below this microsecond's
  -- multiple of 2^20.
  local start = '*'
  if redis.call('EXISTS', stream) == 0 then
    local now = redis.call('TIME')
    local micros = tonumber(now[2])
    start = string.format('%d-%d', tonumber(now[1]) * 1000 + math.floor(micros / 1000),
                          (micros % 1000 + 1) * 1048576)
  end
  id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], start,
                  'sse-epoch', epoch, unpack(ARGV, fields))
end
if ttl > 0 then
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', meta, ttl)
else
  redis.call('PERSIST', stream)
  redis.call('PERSIST', meta)
end
if logged then
  redis.pcall('XADD', ARGV[4], 'MAXLEN', '~', ARGV[6], '*',
              'c', ARGV[5], 'e', epoch, 'i', id)
end
if live then
  redis.call('SPUBLISH', stream, id)
end
local answer = epoch .. ':' .. id
if once then
  redis.call('SET', once, digest .. ' ' .. answer, 'PX', once_ttl)
end
return answer
""")

#: A stream's state and (if ARGV[3], an id, is not empty) a page of
#: entries after that id: KEYS stream, epoch; ARGV TTL in ms, the epoch
#: the entries are wanted in ('' for any), the id, the page's most entries
#: and bytes.  Reads the epoch, creating it if none (its first entry to be
#: marked); refreshes the TTLs.
#: Returns {epoch, previous epoch, exists, last-generated-id, first entry
#: id, length, entries-added, max-deleted-entry-id, more, entries}.
SNAPSHOT = script("""
local stream, meta = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[1])
local want, after = ARGV[2], ARGV[3]
local count, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local known = redis.call('HMGET', meta, 'e', 'p')
local epoch = known[1]
if not epoch then
  epoch = new_epoch()
  redis.call('HSET', meta, 'e', epoch, 'm', 1)
end
local exists = redis.call('EXISTS', stream)
if ttl > 0 then
  redis.call('PEXPIRE', meta, ttl)
  if exists == 1 then redis.call('PEXPIRE', stream, ttl) end
end
local last, first, length, added, deleted = '0-0', false, 0, 0, '0-0'
local entries, more = {}, 0
if exists == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    local name, value = info[i], info[i + 1]
    if name == 'last-generated-id' then last = value
    elseif name == 'first-entry' then if value then first = value[1] end
    elseif name == 'length' then length = value
    elseif name == 'entries-added' then added = value
    elseif name == 'max-deleted-entry-id' then deleted = value
    end
  end
  if after ~= '' and (want == '' or want == epoch) then
    entries = redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', count)
    if #entries >= count then more = 1 end
    local size = 0
    for i = 1, #entries do
      local fields = entries[i][2]
      for j = 1, #fields do size = size + #fields[j] end
      if size >= budget and i < #entries then
        for k = #entries, i + 1, -1 do entries[k] = nil end
        more = 1
        break
      end
    end
  end
end
return {epoch, known[2], exists, last, first, length, added, deleted, more, entries}
""")

#: Rotate an epoch that is still ARGV[1] (Redis lost writes under it):
#: KEYS stream, epoch; ARGV the epoch, TTL in ms.  The old one is kept as
#: ``p``, so that every process knows the stream itself went on.
ROTATE = script("""
local meta = KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if epoch ~= ARGV[1] then return epoch end
local new = new_epoch()
redis.call('HSET', meta, 'e', new, 'p', epoch, 'm', 1)
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', meta, ARGV[2]) end
return new
""")

#: Refresh the TTL of followed channels and tell their epochs: KEYS
#: stream, epoch, stream, epoch...; ARGV TTL in ms (0: none).  Returns
#: each channel's epoch (nil if it has none: Redis lost it).
REFRESH = script("""
local ttl = tonumber(ARGV[1])
local epochs = {}
for i = 1, #KEYS, 2 do
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[i], ttl)
    redis.call('PEXPIRE', KEYS[i + 1], ttl)
  end
  epochs[#epochs + 1] = redis.call('HGET', KEYS[i + 1], 'e')
end
return epochs
""")

#: The publish log: its state and (if ARGV[5], a count, is not 0) a page
#: of the channels under a prefix with entries in it: KEYS log, names;
#: ARGV the channels' key prefix, the channel name prefix, an id (``''``:
#: none), the page's last id, its most entries.  Returns {last-generated-id,
#: first entry id, whether entries were ever trimmed, whether the id is an
#: entry, the page's last entry id, more, found}, found holding for each
#: channel under the prefix its first entry of the page: {channel, epoch,
#: entry id, the channel's epoch now}.  The channels found are added to
#: the index of names (see :data:`NAMES`).
LOG = script("""
local log, index = KEYS[1], KEYS[2]
local keys, names, after, upto = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local count = tonumber(ARGV[5])
local last, first, trimmed, present = '0-0', false, 0, 0
local found, page_end, more = {}, false, 0
if redis.call('EXISTS', log) == 1 then
  local info = redis.call('XINFO', 'STREAM', log)
  local length, added = 0, 0
  for i = 1, #info, 2 do
    local name, value = info[i], info[i + 1]
    if name == 'last-generated-id' then last = value
    elseif name == 'first-entry' then if value then first = value[1] end
    elseif name == 'length' then length = value
    elseif name == 'entries-added' then added = value
    end
  end
  if added > length then trimmed = 1 end
  if after ~= '' then
    if #redis.call('XRANGE', log, after, after) > 0 then present = 1 end
  end
  if after ~= '' and count > 0 then
    local page = redis.call('XRANGE', log, '(' .. after, upto, 'COUNT', count)
    local seen = {}
    for n = 1, #page do
      local fields = page[n][2]
      local c, e, id
      for j = 1, #fields - 1, 2 do
        local name = fields[j]
        if name == 'c' then c = fields[j + 1]
        elseif name == 'e' then e = fields[j + 1]
        elseif name == 'i' then id = fields[j + 1]
        end
      end
      if c and e and id and not seen[c] and string.sub(c, 1, #names) == names then
        seen[c] = true
        local now = redis.call('HGET', keys .. c .. '#epoch', 'e')
        found[#found + 1] = {c, e, id, now}
      end
    end
    if #page > 0 then page_end = page[#page][1] end
    if #page >= count then more = 1 end
    for n = 1, #found do redis.call('ZADD', index, 0, found[n][1]) end
  end
end
return {last, first, trimmed, present, page_end, more, found}
""")

#: A page of the index of the channel names that patterns found (a sorted
#: set, every score 0, read by name): KEYS names; ARGV the channels' key
#: prefix, the name prefix (ending with a dot), the last name of the
#: previous page (``''``: none), the page's most names, the most names
#: kept.  Returns the names.  Beyond the most kept, the names of the page
#: whose channel is forgotten (no epoch) leave the index.
NAMES = script("""
local index, keys, prefix, after = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local count, kept = tonumber(ARGV[4]), tonumber(ARGV[5])
local low = '[' .. prefix
if after ~= '' then low = '(' .. after end
local high = '(' .. string.sub(prefix, 1, -2)
  .. string.char(string.byte(prefix, -1) + 1)
local page = redis.call('ZRANGE', index, low, high, 'BYLEX', 'LIMIT', 0, count)
if #page > 0 and redis.call('ZCARD', index) > kept then
  for i = 1, #page do
    if redis.call('EXISTS', keys .. page[i] .. '#epoch') == 0 then
      redis.call('ZREM', index, page[i])
    end
  end
end
return page
""")

#: The heads of channels, changing nothing: KEYS stream, epoch, stream,
#: epoch...  Returns for each {its epoch (nil if none), its stream's
#: last-generated-id}.
HEADS = script("""
local heads = {}
for i = 1, #KEYS, 2 do
  local epoch = redis.call('HGET', KEYS[i + 1], 'e')
  local last = '0-0'
  if epoch and redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then last = info[j + 1] end
    end
  end
  heads[#heads + 1] = {epoch, last}
end
return heads
""")

# Presence (see twisted_sse._redis._presence): the keys of one channel are
# its processes' hash, its identities' sorted set, its log (a list), given
# in that order in KEYS, and one hash per process of the connections of
# each identity there, named after the processes' hash (``...:procs`` ->
# ``...:proc:<process id>``).  In the processes' hash, field ``#e`` is the
# presence's epoch (new whenever the hash is made again), ``#n`` the number
# of changes ever logged in it (the log keeps the last ones: the entry
# numbered ``#n`` is its last), and each process's field holds ``<lease
# expiry, ms of Redis's clock> <connections> <version>``.
PRESENCE_LIB = """
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- Call command on key with the values of list, a few hundred at a time.
local function each_chunk(command, key, list)
  for i = 1, #list, 500 do
    redis.call(command, key, unpack(list, i, math.min(i + 499, #list)))
  end
end

-- Count delta more connections of sub over every process: a change from
-- none to some is a join, from some to none a leave; changes are added
-- to log ('j' or 'l' and the identity), for keep_log.
local function add(k, sub, delta, log)
  local score = tonumber(redis.call('ZINCRBY', k[2], -delta, sub))
  local was = -(score + delta)
  if score >= 0 then
    redis.call('ZREM', k[2], sub)
    if was > 0 then log[#log + 1] = 'l' .. sub end
  elseif was <= 0 then
    log[#log + 1] = 'j' .. sub
  end
end

-- Append the changes in log to the channel's log, which keeps logmax.
local function keep_log(k, log, logmax)
  if #log == 0 then return end
  redis.call('HINCRBY', k[1], '#n', #log)
  each_chunk('RPUSH', k[3], log)
  redis.call('LTRIM', k[3], -logmax, -1)
end

-- The key of a process's connections by identity.
local function proc_key(k, pid)
  return string.sub(k[1], 1, #k[1] - 5) .. 'proc:' .. pid
end

-- Forget the processes (but keep) whose lease has ended, as if their
-- connections had all left.  Returns whether any was.
local function reap(k, now, keep, log)
  local all = redis.call('HGETALL', k[1])
  local changed = false
  for i = 1, #all, 2 do
    local pid = all[i]
    if string.byte(pid, 1) ~= 35 and pid ~= keep then
      local expiry = tonumber(string.match(all[i + 1], '^(%d+) ')) or 0
      if expiry <= now then
        local key = proc_key(k, pid)
        local subs = redis.call('HGETALL', key)
        for j = 1, #subs, 2 do
          add(k, subs[j], -tonumber(subs[j + 1]), log)
        end
        redis.call('DEL', key)
        redis.call('HDEL', k[1], pid)
        changed = true
      end
    end
  end
  return changed
end

local function expire(k, ttl)
  for i = 1, 3 do redis.call('PEXPIRE', k[i], ttl) end
end
"""

#: Write this process's presence on channels: KEYS per channel its
#: processes' hash, identities, log and this process's hash; ARGV the
#: process id, the lease and the keys' TTL in ms, the log's length, then
#: per channel a new version, the version it changes (``*``: any, the
#: identities being all of them; ``''``: none), the connections (-1: only
#: renew the lease) and a JSON object of the identities' connections (all
#: of them, or what changed since the version it changes).  Returns per
#: channel 0, or 1 when the version stored is not the one changed (this
#: process must write all of it).
PRESENCE_UPDATE = script(
    PRESENCE_LIB
    + """
local pid, lease = ARGV[1], tonumber(ARGV[2])
local ttl, logmax = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local answers = {}
for c = 1, #KEYS / 4 do
  local k = {KEYS[4 * c - 3], KEYS[4 * c - 2], KEYS[4 * c - 1], KEYS[4 * c]}
  local a = 4 * c
  local version, base, total = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local log = {}
  -- Whether the presence is made anew (nothing below makes '#e' before
  -- the write that needs it, nor removes it).
  local made = redis.call('HEXISTS', k[1], '#e') == 0
  if made then
    -- Made anew: what is left of an older presence goes.
    redis.call('DEL', k[1], k[2], k[3], k[4])
  else
    reap(k, now, pid, log)
  end
  local mine = redis.call('HGET', k[1], pid)
  local stored = mine and string.match(mine, ' (%d+)$') or ''
  local answer = 0
  if base ~= '*' and base ~= stored then
    answer = 1
  elseif total < 0 then
    if mine then
      local kept = string.match(mine, ' (%d+ %d+)$')
      redis.call('HSET', k[1], pid, (now + lease) .. ' ' .. kept)
      redis.call('PEXPIRE', k[4], ttl + lease)
    end
  else
    if total > 0 and made then
      redis.call('HSET', k[1], '#e', new_epoch(), '#n', 0)
    end
    local given = cjson.decode(ARGV[a + 4])
    if base == '*' then
      local old = redis.call('HGETALL', k[4])
      local had = {}
      for j = 1, #old, 2 do had[old[j]] = tonumber(old[j + 1]) end
      redis.call('DEL', k[4])
      for sub, n in pairs(had) do
        local delta = (given[sub] or 0) - n
        if delta ~= 0 then add(k, sub, delta, log) end
      end
      local pairs_kept = {}
      for sub, n in pairs(given) do
        if not had[sub] and n ~= 0 then add(k, sub, n, log) end
        if n > 0 then
          pairs_kept[#pairs_kept + 1] = sub
          pairs_kept[#pairs_kept + 1] = n
        end
      end
      each_chunk('HSET', k[4], pairs_kept)
    else
      for sub, delta in pairs(given) do
        if delta ~= 0 then
          add(k, sub, delta, log)
          if tonumber(redis.call('HINCRBY', k[4], sub, delta)) <= 0 then
            redis.call('HDEL', k[4], sub)
          end
        end
      end
    end
    if total > 0 then
      redis.call('HSET', k[1], pid, (now + lease) .. ' ' .. total .. ' ' .. version)
      redis.call('PEXPIRE', k[4], ttl + lease)
    else
      redis.call('HDEL', k[1], pid)
      redis.call('DEL', k[4])
    end
  end
  keep_log(k, log, logmax)
  expire(k, ttl)
  answers[c] = answer
end
return answers
""",
)

#: Who is on a channel: KEYS its processes' hash, identities and log; ARGV
#: the most identities to list, the log's length and the keys' TTL in ms.
#: Forgets the processes whose lease ended first.  Returns {epoch (nil:
#: nobody was ever there, or Redis lost it), the number of the last change
#: logged, connections of the live processes, identities, the first
#: identities and their scores (minus their connections)}.
PRESENCE_READ = script(
    PRESENCE_LIB
    + """
local k = {KEYS[1], KEYS[2], KEYS[3]}
local limit, logmax, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local epoch = redis.call('HGET', k[1], '#e')
if not epoch then return {false, 0, 0, 0, {}} end
local log = {}
if reap(k, now_ms(), '', log) then
  keep_log(k, log, logmax)
  expire(k, ttl)
end
local count = 0
local all = redis.call('HGETALL', k[1])
for i = 1, #all, 2 do
  if string.byte(all[i], 1) ~= 35 then
    count = count + (tonumber(string.match(all[i + 1], '^%d+ (%d+)')) or 0)
  end
end
local members = {}
if limit > 0 then
  members = redis.call('ZRANGE', k[2], 0, limit - 1, 'WITHSCORES')
end
local changes = tonumber(redis.call('HGET', k[1], '#n') or '0')
return {epoch, changes, count, redis.call('ZCARD', k[2]), members}
""",
)

#: The changes of followed channels: KEYS per channel its processes' hash,
#: identities and log; ARGV the most changes per channel, the log's
#: length, the keys' TTL in ms, then per channel the epoch its followers
#: know (``''``: none) and the number of the last change they have.
#: Forgets the processes whose lease ended first.  Returns per channel
#: {epoch (nil: none), the number of the last change, of the first one
#: the log keeps, of the first one given, the changes given}: those after
#: the one asked for, if the epoch is the one known (or none was).
PRESENCE_CHANGES = script(
    PRESENCE_LIB
    + """
local page, logmax, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local answers = {}
for c = 1, #KEYS / 3 do
  local k = {KEYS[3 * c - 2], KEYS[3 * c - 1], KEYS[3 * c]}
  local want, after = ARGV[2 * c + 2], tonumber(ARGV[2 * c + 3])
  local epoch = redis.call('HGET', k[1], '#e')
  local log = {}
  if epoch and reap(k, now, '', log) then
    keep_log(k, log, logmax)
    expire(k, ttl)
  end
  local changes = tonumber(redis.call('HGET', k[1], '#n') or '0')
  local first = changes - redis.call('LLEN', k[3]) + 1
  local from = math.max(after + 1, first)
  local given = {}
  if epoch and (want == '' or want == epoch) and from <= changes then
    given = redis.call('LRANGE', k[3], from - first, from - first + page - 1)
  end
  answers[c] = {epoch or false, changes, first, from, given}
end
return answers
""",
)

SCRIPTS = (
    PUBLISH,
    SNAPSHOT,
    ROTATE,
    REFRESH,
    LOG,
    NAMES,
    HEADS,
    PRESENCE_UPDATE,
    PRESENCE_READ,
    PRESENCE_CHANGES,
)


def run_script(
    link: Commands, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
) -> Deferred[Reply]:
    """
    Run ``script``: one ``EVALSHA``, or, if Redis does not have the script
    (it restarted, or its scripts were flushed), one ``EVAL`` more.
    """

    sent = link.execute("EVALSHA", script.sha, len(keys), *keys, *args)
    return sent.addErrback(_script_again, link, script, keys, args)


def _script_again(
    failure: Failure,
    link: Commands,
    script: Script,
    keys: Sequence[Arg],
    args: Sequence[Arg],
) -> Deferred[Reply]:
    if failure.check(RedisCommandError) and "NOSCRIPT" in str(failure.value):
        return link.execute("EVAL", script.source, len(keys), *keys, *args)
    return fail(failure)
