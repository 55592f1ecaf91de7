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

#: Publish: KEYS stream, epoch; ARGV MAXLEN, TTL in ms (0: none), the
#: fields.  Returns ``<epoch>:<entry id>``.  The first entry of an epoch
#: (``m`` is set until it is written) carries the epoch first, for the
#: readers of the channel (see the module docstring).
PUBLISH = script("""
local stream, meta = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[2])
local known = redis.call('HMGET', meta, 'e', 'm')
local epoch = known[1]
local id
if epoch and not known[2] then
  id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
else
  if epoch then
    redis.call('HDEL', meta, 'm')
  else
    epoch = new_epoch()
    redis.call('HSET', meta, 'e', epoch)
  end
  id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*',
                  'sse-epoch', epoch, unpack(ARGV, 3))
end
if ttl > 0 then
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', meta, ttl)
else
  redis.call('PERSIST', stream)
  redis.call('PERSIST', meta)
end
return epoch .. ':' .. id
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

SCRIPTS = (PUBLISH, SNAPSHOT, ROTATE, REFRESH)


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
