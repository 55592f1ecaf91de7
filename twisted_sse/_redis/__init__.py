"""
The Redis broker: :class:`~twisted_sse.IBroker` over Redis Streams, so that
any number of server processes share channels, ids and history.

One stream per channel (``sse:<channel>``) holds the events as fields
(``data``, ``event``, ``retry``, ``comment``, ``key``).  Each process keeps
two connections: one for commands (publish, replay) and one for a single
reader loop that ``XREAD BLOCK``\\ s on the streams of every channel with
local subscribers, from the last id it has handled in each, and hands each
entry, encoded once, to every local subscriber.  Because the reader always
resumes from the last id it has seen, an outage of Redis or of the network
loses nothing that Redis still holds, and what Redis trimmed in the
meantime is announced as a ``history-lost`` event.

Epochs: telling a lost history from a short one
-----------------------------------------------

Stream entry ids alone cannot tell that Redis lost a channel: after a
restart without persistence, a ``FLUSHALL``, an expiry or a failover to a
replica that missed writes, new entries get ids larger than the old ones,
and a client resuming from an old id would silently skip what was lost.
So, as Centrifugo does, each channel has an *epoch* kept beside its stream,
in the hash ``sse:<channel>#epoch`` (``#`` cannot occur in a channel
name): field ``e`` is a token made from Redis's clock in microseconds (base
36), new whenever the hash is created, ``p`` the epoch it replaced when a
process rotated it, and ``m`` is set until the epoch's first entry is
written.  Event ids are ``<epoch>:<stream entry id>``, e.g.
``kq3x9b1c0a:1765000000123-0``, and so are the positions given to new
subscribers, an empty channel's included (``kq3x9b1c0a:0-0``).  A client
resuming with an id of another epoch is told ``history_lost = "unknown"``
(an id without an epoch, from before epochs, too; garbage is
``"malformed"``).

Every command that may create the epoch is one Lua script (``EVALSHA``,
``EVAL`` when Redis answers ``NOSCRIPT``), so the epoch is created
atomically with what uses it: publishing is one script that reads (or
creates) the epoch, ``XADD``\\ s the entry (``MAXLEN ~ <history>``),
sets both keys' TTL and appends to the publish log (below); reading a
stream's state and a page of it is one script that reads (or creates) the
epoch, the stream's ``XINFO`` and up to a page of entries.  The first
entry published in an epoch carries it in a first field ``sse-epoch``, so
that readers that follow the channel see at once, without reading the
epoch per event, that Redis lost the channel and started a new one.

A process's reader learns that a channel's epoch changed in three ways:
that marked entry (a flush or expiry followed by a publish); the check of
every channel after it reconnects (a restart or failover); and a periodic
check of the epochs of the channels it follows (a flush with no publish
since).  Its local subscribers then get a ``history-lost`` event (reason
``"unknown"``) whose id is in the new epoch and resumes exactly, followed
by the channel's new events.  When a reader finds that Redis holds less of
a stream than it has read, under the same epoch (a failover to a replica
that missed writes), it rotates the epoch (a compare-and-set script that
records the old one as ``p``), so that the ids given out before are
refused; every process then continues after what is left.

Channels are forgotten after ``channel_ttl`` of idleness: every publish
sets the TTL of the stream and of its epoch, in the same script, and each
process refreshes the TTL of the channels it follows (every third of the
TTL, one script for up to 500 channels), so a channel goes only when no
process has a subscriber on it and nobody published for the TTL.

A resuming subscriber's replay is paced (see
:meth:`~twisted_sse.IBroker.subscribe`): it is read in pages (a bounded
number of entries and bytes, with the stream's state, in one script) and
kept as a cursor between them; the subscriber joins the live fan-out only
when its replay reaches the position of the process's reader.

Sentinel: following a failover
------------------------------

With a ``redis+sentinel://`` address, each connection attempt asks the
sentinels in turn where the primary of the service is, and the
connection is used only once ``ROLE`` says ``master``.  A lost
connection, a ``READONLY`` answer, or the sentinels naming another
primary at the check they are asked every second (no ``+switch-master``
subscription: the connections speak no pub/sub) drop the connections,
which are made again to the new primary; meanwhile the broker is not
available (publishes fail, new subscribers are sent away, open ones
resume when it is back).  Replication is asynchronous, so the new primary
may lack the last events acknowledged: the reader's check after it
reconnects finds its streams shorter than it read, rotates their epochs,
and the subscribers are told ``history-lost``.  Events acknowledged that
no reader had read yet are caught by the publisher: each process
remembers, per channel, the newest event it acknowledged in the last ten
seconds, and once its command connection is back after a loss, rotates
the epoch of a channel whose stream (under the same epoch) ends before
it.  ``wait_replicas`` makes
each publish ``WAIT`` for that many replicas before it is acknowledged,
for those who prefer a slower publish to an announced loss.

Redis Cluster: the channel is the shard
---------------------------------------

With a ``redis+cluster://`` address, every key of a channel carries the
channel name as its hash tag: the stream is ``sse:{<channel>}`` and the
epoch ``sse:{<channel>}#epoch`` (the presence and idempotency keys already
had the tag), so one primary holds all of a channel and every script
above runs as it does on one Redis.  Each of the broker's connections is a
:class:`~twisted_sse._redis._cluster.ClusterLink`: the slot map (``CLUSTER
SLOTS``, asked of the seeds in turn, again on errors and every 10
seconds), a connection per primary, each command sent to the primary of
its key's slot, ``MOVED`` (the map updated), ``ASK`` (``ASKING`` first)
and ``TRYAGAIN`` followed.  The reader cannot block on streams of several
slots, so the publish script also ``SPUBLISH``\\ es the new id on the
shard channel named as the stream (no publish log: patterns are refused),
and a :class:`~twisted_sse._redis._pubsub.ShardWatch` subscribes, on one
connection per primary, to the streams the process follows; a message or
a confirmed subscription marks the stream, and the reader reads the marked
streams from its position (one ``XREAD`` per slot, sent together), so a
lost message delays nothing that a later one or a reconnection does not
catch up.  Scripts over many channels (the TTL refresh, presence) are sent
per slot.  The broker is available while every slot's primary is
connected; a primary that fails is replaced by the cluster (a replica
promoted), the map read again, and the events acknowledged just before
are checked as after a Sentinel failover.

Patterns: the publish log
-------------------------

A pattern (``news.*``) needs the channels under a prefix as they get
events, and, to resume, those that got events since a point; Redis has no
index of stream keys by prefix short of ``SCAN``.  So the publish script
also appends, in the same script, an entry to one stream per key prefix,
the *publish log* ``sse:#log`` (``XADD MAXLEN ~ 100000``, with no TTL;
fields ``c`` the channel, ``e`` its epoch, ``i`` its new entry id: about
54 bytes each, a few megabytes in all, and a few microseconds of Redis
time per publish).  A watch's marker is a log entry id: every channel
under its prefix with a log entry up to it has been told to the watch.
While a process has watches, its reader also ``XREAD``\\ s the log, in the
same command as the channels (atomic: a channel entry read comes with its
log entry), and tells each watch of a channel under its prefix once, with
the position just before that entry, before moving the watches' markers
past it.  A watch resuming from a marker first scans the log after it (in
pages, filtered by prefix in a script, which gives each channel's first
entry after the marker and its epoch now) up to where the reader is, the
channels the reader finds meanwhile told after the scan's.  A marker
older than the log is ``"trimmed"`` (the channels are found from what the
log keeps), one it never had or past its end ``"unknown"``.  A resuming
subscription's cursor may also hold channels whose events the marker has
passed though they were not sent (delivered but not yet written, or a
paused replay): it finds them in the index of the names patterns found,
``sse:#names`` (a sorted set read by name; the watches add the channels
they are told of, and publishing adds nothing), which it reads in pages
under the prefix.  Bounds: a pattern resumes exactly from a marker at most
100000 publishes old (over every channel of the key prefix); a reader that
falls behind by more (a long outage) may miss channels, and logs it; the
names of forgotten channels leave the index once it holds more than
100000 names; every process must publish with a version that writes the
log.

Presence: who is on a channel
-----------------------------

Each process counts its subscriber connections per channel and identity
(``enter`` and ``leave`` only count, and mark the channel) and keeps them
in Redis under a lease.  Per channel ``C``, the keys share the hash tag
``{C}`` (so that Redis Cluster can keep them on one node) and start with
``#`` after the prefix (no channel name has one):

* ``sse:#presence:{C}:procs``, a hash: field ``#e`` the presence's epoch
  (made, as a channel's, from Redis's clock whenever the hash is made
  again), ``#n`` the number of changes ever logged under it, and one field
  per process with connections on ``C`` (its id, 16 hex digits, new at
  each start): ``<lease expiry> <connections> <version>``, the expiry in
  milliseconds of Redis's clock (``TIME``), so that the processes' clocks
  do not matter;
* ``sse:#presence:{C}:proc:<id>``, a hash per process: the connections of
  each identity there;
* ``sse:#presence:{C}:subs``, a sorted set of the identities on ``C`` over
  every live process, each scored minus its connections: ``ZRANGE 0
  limit-1`` lists the most connected first, then by name, as
  :class:`~twisted_sse.PresenceInfo` does, and ``ZCARD`` tells whether the
  list is truncated;
* ``sse:#presence:{C}:log``, a list of the last 1000 changes (``j`` or
  ``l`` and the identity), numbered by ``#n``: the last entry is change
  ``#n``.

A change is logged when an identity's connections over every live process
go from none to some (a join) or back to none (a leave), and only then;
anonymous connections change the count alone.  Each process writes the
channels it marked every 0.2 seconds (``presence_flush``), up to 200 of
them a script: what changed since its last write, or all of it when Redis
may hold another version (a write failed, Redis lost it), which the
script checks against the version in the process's field.  Every 5
seconds (``presence_renew``) one script per 200 channels renews the
leases (15 seconds, ``presence_lease``) of the channels it has
connections on, and has written whole those whose entry Redis lost; the
same is done at once when the command connection is ready again.  Every
script that touches a channel first forgets the processes whose lease
ended, as if their connections had left (leaves logged), and sets the
keys' TTL to twice the lease (a process's own hash one lease more), so
nothing outlives its processes.  A broker that stops removes its entries.

Reading a channel's presence is one script (the forgetting, the live
processes' connections summed, the first identities, their number and
the number of the last change): one round trip.  A follower starts from
such a read, and then gets the changes numbered after it; each process
reads the changes of every channel it has followers of every 0.5 seconds
(``presence_poll``), one script per 200 channels, from the first change
any of its followers lacks.  A follower that lacks changes the log no
longer has, or that knew another epoch (Redis lost the presence), is
given a new :class:`~twisted_sse.PresenceInfo` instead.

The modules, in the order they import each other:

* ``_address``: :class:`~twisted_sse.RedisAddress` and
  :func:`~twisted_sse.parse_redis_url`;
* ``_protocol``: one connection on hiredis (commands packed by
  ``hiredis.pack_command``, replies parsed by ``hiredis.Reader`` and
  matched to a FIFO of Deferreds, reply timeouts);
* ``_sentinel``: :class:`~twisted_sse._redis._sentinel.Sentinels`, the
  sentinels of a ``redis+sentinel://`` address asked in turn where the
  primary is, and checked every second for a switch;
* ``_link``: :class:`~twisted_sse._redis._link.RedisLink`, a connection
  kept open by Twisted's ``ClientService`` and prepared (AUTH, SELECT,
  the version check, ``ROLE`` with Sentinel, the scripts) before use;
* ``_cluster``: :class:`~twisted_sse._redis._cluster.ClusterLink`, the
  slot map of a ``redis+cluster://`` address and a link per primary,
  commands routed by slot;
* ``_pubsub``: :class:`~twisted_sse._redis._pubsub.ShardWatch`, the sharded
  subscriptions that wake the reader on a cluster;
* ``_scripts``: the Lua scripts and how they are run;
* ``_entries``: stream entries, stream state and event ids, read from
  replies;
* ``_channels``: the state of a followed channel (its local subscribers,
  the replays on their way to them) and the script that reads a stream's
  state;
* ``_watch``: :class:`~twisted_sse._redis._watch.Watches`, the watches
  of a process, what they are told of the publish log, the scans of
  resuming ones and the index of names;
* ``_reader``: :class:`~twisted_sse._redis._reader.Reader`, the reader
  loop (``XREAD``, catch-up, fan-out, epoch switches, periodic checks,
  the publish log for the watches);
* ``_presence``: :class:`~twisted_sse._redis._presence.RedisPresence`,
  this process's connections in Redis and its followers;
* ``_broker``: :class:`~twisted_sse.RedisBroker` (publish, subscribe, the
  paced replays, the life cycle), which composes the reader and the
  presence.
"""
