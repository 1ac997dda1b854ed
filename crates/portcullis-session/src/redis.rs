//! [`RedisStore`]: sessions in Redis, shared by every gateway instance.
//!
//! Redis enforces expiry itself: every key gets `PEXPIREAT` at the record's `expires`, so
//! `cleanup_expired` only prunes stale index entries. Connections go through redis-rs's
//! `ConnectionManager` (or its cluster client), which reconnects on its own: while Redis is
//! down every operation fails
//! with [`StoreError::Unavailable`] (bounded by the connect and response timeouts), and the
//! first operation after Redis is back works again, without a restart.
//!
//! # Key layout
//!
//! Names are built from escaped parts (`%`, `:`, `{`, `}` are percent-encoded), so no user
//! value can forge a separator or a hash tag. `{...}` is the Redis Cluster hash tag.
//!
//! | key | type | content |
//! |-----|------|---------|
//! | `pc:{u:<partition>:<sub>}:s:<key>` | hash | the record (plus `sidmap`, the name of the key below) |
//! | `pc:{u:<partition>:<sub>}:idx` | sorted set | session hash names of this sub, score = `expires` |
//! | `pc:{u:<partition>:<sub>}:sid:<sid>` | string | the session hash name for this sub + sid |
//! | `pc:{d:<partition>:<sid>}:idx` | sorted set | session hash names with this sid (any sub), score = `expires` |
//! | `pc:k:<key>` | string | the session hash name, so `get(key)` works without knowing the sub |
//! | `pc:lease:<name>` | string | lease holder, `PX` = lease TTL |
//! | `pc:claim:<id>` | string | a claimed id, `PXAT` = its expiry |
//!
//! The channel `pc:invalidate` carries the key of every record updated, replaced or deleted.
//!
//! # Atomicity and Redis Cluster
//!
//! Everything about one (partition, sub) lives in one hash slot, and each Lua script touches
//! only keys of one slot: creating with replacement of the same sub + sid, the CAS update and
//! the deletes are atomic there. The scripts read and delete some keys they find at run time
//! (the replaced session, the sessions of a sub) instead of receiving them in `KEYS`; those are
//! always in the slot of `KEYS[1]`, which Redis Cluster executes correctly (a server that
//! insists on declared keys, e.g. Dragonfly by default, needs undeclared-key access allowed).
//!
//! Two keys live in other slots and are maintained in separate commands, ordered so that a
//! live record is always reachable: the `pc:k:<key>` pointer and the sid index are written
//! *before* the record and cleaned *after* it is removed. A stale pointer or index entry (a
//! crash between steps) points at a missing hash and is ignored on read; it expires with its
//! TTL. No command spans slots (no multi-key pipelines), so the same code runs on a single
//! server and on a cluster:
//!
//! - `redis://` / `rediss://`: one server through a `ConnectionManager`.
//! - `redis+cluster://[user:password@]h1:p1,h2:p2` / `rediss+cluster://...`: Redis Cluster
//!   through redis-rs's cluster client (follows `MOVED`/`ASK`, reconnects). Invalidations
//!   are subscribed on one node at a time (cluster `PUBLISH` reaches every node; the
//!   subscriber moves to the next seed node when its node fails). `cleanup_expired` runs
//!   `SCAN` on every primary.
//!
//! # Retries
//!
//! A command that fails because its connection was dropped (the server restarted, a
//! firewall cut an idle connection) is sent once more on the fresh connection the manager
//! opens; only a second failure is [`StoreError::Unavailable`]. That is safe because every
//! command here may run twice with the same effect: reads; `SET`s of the same value; the
//! scripts, which are compare-and-set (a repeated CAS update sees its own version and
//! reports `Conflict`, which callers treat as "re-read"), delete-if-present or
//! replace-by-key; and `claim_once`, whose value is a per-call nonce so a retry recognises its
//! own claim. A repeated delete after a lost reply returns nothing (the first attempt already
//! deleted), so a refresh token may then go unrevoked; the session is ended either way.
//!
//! Requires Redis 6.2 or newer (`PXAT`, `SCAN ... TYPE`). Costs per operation: `get` 2 round
//! trips, `update` 3, `create` 3-4, `delete` 3.
//!
//! ```no_run
//! # async fn demo() -> Result<(), portcullis_session::StoreError> {
//! use portcullis_session::RedisStore;
//! let store = RedisStore::connect("rediss://:password@redis.internal:6380/0").await?;
//! # Ok(()) }
//! ```

use crate::store::{
    CasOutcome, Invalidation, SessionFilter, SessionRecord, SessionStore, StoreError,
};
use crate::util::{
    bounded, check_next_version, now_secs, ttl_ms, AbortOnDrop, CONNECT_TIMEOUT, OP_TIMEOUT,
};
use async_trait::async_trait;
use futures_util::future::try_join_all;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;

/// The pub/sub channel carrying invalidated keys.
pub const INVALIDATION_CHANNEL: &str = "pc:invalidate";
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
const SCAN_BATCH: usize = 500;

/// Session store on Redis.
#[derive(Clone)]
pub struct RedisStore {
    con: Conn,
    shared: Arc<Shared>,
}

/// A single server or a cluster; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Whether a failed command may be sent once more on a fresh connection: the connection it
/// used was dropped or broke (a restarted server, an idle connection a firewall cut). The
/// connection manager replaces such a connection by itself; the retry waits for the new one.
///
/// Every command this store sends is safe to repeat (see the module docs, "Retries"), so
/// the only question is whether the failure was the connection's.
pub(crate) fn is_retryable(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error())
}

impl Conn {
    fn send_once<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => redis::aio::ConnectionLike::req_packed_command(c, cmd),
            Conn::Cluster(c) => redis::aio::ConnectionLike::req_packed_command(c, cmd),
        }
    }

    fn send_many_once<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => {
                redis::aio::ConnectionLike::req_packed_commands(c, cmd, offset, count)
            }
            Conn::Cluster(c) => {
                redis::aio::ConnectionLike::req_packed_commands(c, cmd, offset, count)
            }
        }
    }
}

/// Retry once: a command that failed because its connection was dropped is sent again on the
/// fresh connection; a second failure is the caller's `Unavailable` (503).
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.send_once(cmd).await {
                Err(e) if is_retryable(&e) => {
                    tracing::info!(error = %e, "Redis connection dropped; retrying once on a fresh connection");
                    self.send_once(cmd).await
                }
                r => r,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.send_many_once(cmd, offset, count).await {
                Err(e) if is_retryable(&e) => {
                    tracing::info!(error = %e, "Redis connection dropped; retrying once on a fresh connection");
                    self.send_many_once(cmd, offset, count).await
                }
                r => r,
            }
        })
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, password included.
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

struct Shared {
    /// Subscriber connections: the server, or every cluster node to try in turn (`PUBLISH`
    /// reaches every node of a cluster).
    pubsub_clients: Vec<Client>,
    runtime: tokio::runtime::Handle,
    invalidations: broadcast::Sender<Invalidation>,
    subscriber: OnceLock<AbortOnDrop>,
}

// ---------------------------------------------------------------------------------------
// Key names

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// Keys of one (partition, sub): one hash slot.
struct SubKeys {
    tag: String,
}

impl SubKeys {
    fn new(partition: &str, sub: &str) -> Self {
        Self {
            tag: format!("pc:{{u:{}:{}}}", esc(partition), esc(sub)),
        }
    }
    fn session(&self, key: &str) -> String {
        format!("{}:s:{}", self.tag, esc(key))
    }
    fn index(&self) -> String {
        format!("{}:idx", self.tag)
    }
    fn sid(&self, sid: &str) -> String {
        format!("{}:sid:{}", self.tag, esc(sid))
    }
}

/// The sub index of the slot a session hash name belongs to.
fn index_of_session(hash: &str) -> Option<String> {
    // Escaped parts contain no ':', so the last ":s:" separates the tag from the key.
    hash.rsplit_once(":s:").map(|(tag, _)| format!("{tag}:idx"))
}

fn sid_index(partition: &str, sid: &str) -> String {
    format!("pc:{{d:{}:{}}}:idx", esc(partition), esc(sid))
}

fn pointer(key: &str) -> String {
    format!("pc:k:{}", esc(key))
}

fn lease_key(name: &str) -> String {
    format!("pc:lease:{}", esc(name))
}

fn claim_key(id: &str) -> String {
    format!("pc:claim:{}", esc(id))
}

fn ms(secs: i64) -> i64 {
    secs.saturating_mul(1000)
}

// ---------------------------------------------------------------------------------------
// Scripts. Each touches the keys of one hash slot only (see the module docs).

/// Sets an index key's TTL to its longest-lived member.
const LUA_TOUCH_INDEX: &str = r"
local function touch_index(idx)
  local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIREAT', idx, string.format('%d', tonumber(top[2]) * 1000))
  end
end
";

/// Removes session hash `h` of sub index `idx` with its sub+sid mapping; returns its key.
const LUA_DROP: &str = r"
local function drop(h, idx, channel)
  local k = redis.call('HGET', h, 'key')
  local m = redis.call('HGET', h, 'sidmap')
  redis.call('DEL', h)
  redis.call('ZREM', idx, h)
  if m and redis.call('GET', m) == h then redis.call('DEL', m) end
  if k then redis.call('PUBLISH', channel, k) end
  return k
end
";

/// KEYS: session hash, sub index, [sub+sid mapping]
/// ARGV: expires_ms, expires, prune_before, channel, field, value, ...
/// Returns the replaced sessions as {hash, key, ...}.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_TOUCH_INDEX}{LUA_DROP}{}",
        r"
local hash, idx, map = KEYS[1], KEYS[2], KEYS[3]
local replaced = {}
if redis.call('EXISTS', hash) == 1 then drop(hash, idx, ARGV[4]) end
if map then
  local old = redis.call('GET', map)
  if old and old ~= hash and redis.call('EXISTS', old) == 1 then
    local k = drop(old, idx, ARGV[4])
    table.insert(replaced, old)
    table.insert(replaced, k or '')
  end
end
redis.call('HSET', hash, unpack(ARGV, 5))
redis.call('PEXPIREAT', hash, ARGV[1])
if map then
  redis.call('SET', map, hash)
  redis.call('PEXPIREAT', map, ARGV[1])
end
redis.call('ZADD', idx, ARGV[2], hash)
redis.call('ZREMRANGEBYSCORE', idx, '-inf', ARGV[3])
touch_index(idx)
return replaced
"
    ))
});

/// KEYS: session hash, sub index
/// ARGV: expected version, new version, renewed, expires, expires_ms, ticket, channel, key
/// Returns {1, stored sid or nil} updated, {0} conflict, {-1} missing.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_TOUCH_INDEX}{}",
        r"
local hash, idx = KEYS[1], KEYS[2]
local v = redis.call('HGET', hash, 'version')
if not v then return {-1, false} end
if v ~= ARGV[1] then return {0, false} end
redis.call('HSET', hash, 'version', ARGV[2], 'renewed', ARGV[3], 'expires', ARGV[4], 'ticket', ARGV[6])
redis.call('PEXPIREAT', hash, ARGV[5])
local m = redis.call('HGET', hash, 'sidmap')
if m and redis.call('GET', m) == hash then redis.call('PEXPIREAT', m, ARGV[5]) end
redis.call('ZADD', idx, ARGV[4], hash)
touch_index(idx)
redis.call('PUBLISH', ARGV[7], ARGV[8])
return {1, redis.call('HGET', hash, 'sid')}
"
    ))
});

/// KEYS: session hash, sub index
/// ARGV: channel, mode ('any' or 'sid'), sid
/// Returns the deleted record's fields, or nil.
static DELETE_ONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_DROP}{}",
        r"
local hash, idx = KEYS[1], KEYS[2]
local f = redis.call('HGETALL', hash)
if #f == 0 then
  redis.call('ZREM', idx, hash)
  return false
end
if ARGV[2] == 'sid' and redis.call('HGET', hash, 'sid') ~= ARGV[3] then return false end
drop(hash, idx, ARGV[1])
return f
"
    ))
});

/// KEYS: sub index
/// ARGV: channel, mode ('any' or 'sid'), sid
/// Returns the deleted records' fields.
static DELETE_SUB: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_DROP}{}",
        r"
local idx = KEYS[1]
local out = {}
for _, h in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
  local f = redis.call('HGETALL', h)
  if #f == 0 then
    redis.call('ZREM', idx, h)
  elseif ARGV[2] ~= 'sid' or redis.call('HGET', h, 'sid') == ARGV[3] then
    drop(h, idx, ARGV[1])
    table.insert(out, f)
  end
end
return out
"
    ))
});

/// KEYS: sub index
/// ARGV: now
/// Returns the live records' fields.
static FIND_SUB: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  local f = redis.call('HGETALL', h)
  if #f > 0 then table.insert(out, f) end
end
return out
",
    )
});

/// KEYS: sid index
/// ARGV: member, score, prune_before
/// Raises the member's score (never lowers it: a late writer must not shorten it), prunes
/// expired members, sets the key's TTL to its longest-lived member.
static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_TOUCH_INDEX}{}",
        r"
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
touch_index(KEYS[1])
return 1
"
    ))
});

/// KEYS: pointer
/// ARGV: session hash name, expires_ms
/// Returns the previous session hash name.
static POINTER_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return old
",
    )
});

/// KEYS: pointer
/// ARGV: expires_ms
/// Returns the session hash name; makes the pointer live at least until expires_ms.
static POINTER_TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local loc = redis.call('GET', KEYS[1])
if not loc then return false end
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 then
  local t = redis.call('TIME')
  local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + pttl
  if until_ms < tonumber(ARGV[1]) then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) end
end
return loc
",
    )
});

/// KEYS: pointer. ARGV: session hash name. Deletes the pointer if it still points there.
static POINTER_DEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// KEYS: claim. ARGV: nonce, expires_ms. Returns 1 if the id was not claimed yet or was
/// claimed with this nonce (a retried call), 0 if someone else claimed it.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return 1
",
    )
});

/// KEYS: lease. ARGV: holder, ttl_ms. Returns 1 if `holder` holds the lease now.
static LEASE_TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
    )
});

/// KEYS: lease. ARGV: holder.
static LEASE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

// ---------------------------------------------------------------------------------------
// Decoding

fn map_err(e: RedisError) -> StoreError {
    if e.kind() == redis::ErrorKind::TypeError {
        StoreError::Corrupt(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("redis session hash: {what}"))
}

fn bytes(v: Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        _ => Err(corrupt("unexpected value type")),
    }
}

fn opt_string(v: Value) -> Result<Option<String>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        v => String::from_utf8(bytes(v)?)
            .map(Some)
            .map_err(|_| corrupt("not UTF-8")),
    }
}

/// A hash reply (`HGETALL`: flat array in RESP2, map in RESP3) as a record; `None` if empty.
fn parse_record(v: Value) -> Result<Option<SessionRecord>, StoreError> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Nil => return Ok(None),
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => return Err(corrupt("not a hash")),
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut fields: HashMap<String, Vec<u8>> = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        let k = String::from_utf8(bytes(k)?).map_err(|_| corrupt("field name"))?;
        fields.insert(k, bytes(v)?);
    }
    let text = |name: &str| -> Result<String, StoreError> {
        let b = fields.get(name).ok_or_else(|| corrupt(name))?;
        String::from_utf8(b.clone()).map_err(|_| corrupt(name))
    };
    let int =
        |name: &str| -> Result<i64, StoreError> { text(name)?.parse().map_err(|_| corrupt(name)) };
    Ok(Some(SessionRecord {
        key: text("key")?,
        partition: text("partition")?,
        sub: text("sub")?,
        sid: if fields.contains_key("sid") {
            Some(text("sid")?)
        } else {
            None
        },
        created: int("created")?,
        renewed: int("renewed")?,
        expires: int("expires")?,
        version: text("version")?.parse().map_err(|_| corrupt("version"))?,
        ticket: fields
            .get("ticket")
            .cloned()
            .ok_or_else(|| corrupt("ticket"))?,
    }))
}

fn parse_records(v: Value) -> Result<Vec<SessionRecord>, StoreError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if let Some(r) = parse_record(item)? {
                    out.push(r);
                }
            }
            Ok(out)
        }
        _ => Err(corrupt("not a list of hashes")),
    }
}

// ---------------------------------------------------------------------------------------

impl RedisStore {
    /// Connects to `redis://[user:password@]host[:port][/db]` or `rediss://...` (TLS), or to
    /// a Redis Cluster with `redis+cluster://[user:password@]host1:port1,host2:port2` (or
    /// `rediss+cluster://`; the nodes are seeds, the rest is discovered).
    /// An unreachable server is [`StoreError::Unavailable`] after at most a few seconds.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let invalid = |e: RedisError| StoreError::Config(format!("invalid Redis URL: {e}"));
        let (con, pubsub_clients) = if let Some(nodes) = cluster_nodes(url) {
            let nodes = nodes?;
            let clients = nodes
                .iter()
                .map(|n| Client::open(n.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let cluster = ClusterClient::builder(nodes)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                // Redirects (MOVED/ASK while resharding) count as retries; the operation
                // timeout bounds the total anyway.
                .retries(3)
                .build()
                .map_err(invalid)?;
            let con = tokio::time::timeout(OP_TIMEOUT, cluster.get_async_connection())
                .await
                .map_err(|_| StoreError::Unavailable("Redis Cluster connect timed out".into()))?
                .map_err(map_err)?;
            (Conn::Cluster(con), clients)
        } else {
            let client = Client::open(url).map_err(invalid)?;
            // No retries inside the manager: an operation during an outage fails within the
            // connect timeout, and the next one tries again.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT)
                .set_number_of_retries(0);
            let con = tokio::time::timeout(
                OP_TIMEOUT,
                ConnectionManager::new_with_config(client.clone(), config),
            )
            .await
            .map_err(|_| StoreError::Unavailable("Redis connect timed out".into()))?
            .map_err(map_err)?;
            (Conn::Single(con), vec![client])
        };
        let (invalidations, _) = broadcast::channel(1024);
        Ok(Self {
            con,
            shared: Arc::new(Shared {
                pubsub_clients,
                runtime: tokio::runtime::Handle::current(),
                invalidations,
                subscriber: OnceLock::new(),
            }),
        })
    }

    fn con(&self) -> Conn {
        self.con.clone()
    }

    async fn hgetall(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let v: Value = redis::cmd("HGETALL")
            .arg(hash)
            .query_async(&mut self.con())
            .await
            .map_err(map_err)?;
        parse_record(v)
    }

    /// Deletes the session stored in `hash` (if `sid` is given, only if it has that sid) and
    /// cleans its pointer and sid index entry.
    async fn delete_at(
        &self,
        hash: &str,
        sid: Option<&str>,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(index) = index_of_session(hash) else {
            return Ok(None);
        };
        let v: Value = DELETE_ONE
            .key(hash)
            .key(index)
            .arg(INVALIDATION_CHANNEL)
            .arg(if sid.is_some() { "sid" } else { "any" })
            .arg(sid.unwrap_or(""))
            .invoke_async(&mut self.con())
            .await
            .map_err(map_err)?;
        let record = parse_record(v)?;
        if let Some(r) = &record {
            self.forget(r, hash).await?;
        }
        Ok(record)
    }

    /// Second step after a record is gone: its pointer and sid index entry (two other
    /// slots, hence two commands rather than one script).
    async fn forget(&self, record: &SessionRecord, hash: &str) -> Result<(), StoreError> {
        let pointer_gone = async {
            // Only if it still points here: the key may have been created again elsewhere.
            POINTER_DEL
                .key(pointer(&record.key))
                .arg(hash)
                .invoke_async::<i64>(&mut self.con())
                .await
                .map_err(map_err)
        };
        let index_gone = async {
            match &record.sid {
                Some(sid) => redis::cmd("ZREM")
                    .arg(sid_index(&record.partition, sid))
                    .arg(hash)
                    .query_async::<i64>(&mut self.con())
                    .await
                    .map_err(map_err),
                None => Ok(0),
            }
        };
        tokio::try_join!(pointer_gone, index_gone)?;
        Ok(())
    }

    async fn index_add(&self, index: &str, hash: &str, expires: i64) -> Result<(), StoreError> {
        INDEX_ADD
            .key(index)
            .arg(hash)
            .arg(expires)
            .arg(now_secs())
            .invoke_async::<i64>(&mut self.con())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn do_create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let keys = SubKeys::new(&record.partition, &record.sub);
        let hash = keys.session(&record.key);
        let expires_ms = ms(record.expires);

        // 1. The pointer, first: a record must never exist without one.
        let previous: Option<String> = POINTER_SET
            .key(pointer(&record.key))
            .arg(&hash)
            .arg(expires_ms)
            .invoke_async::<Value>(&mut self.con())
            .await
            .map_err(map_err)
            .and_then(opt_string)?;
        if let Some(previous) = previous.filter(|p| *p != hash) {
            // The key existed under another partition/sub: overwrite means remove that one.
            self.delete_at(&previous, None).await?;
        }
        // 2. The sid index (another slot), before the record.
        if let Some(sid) = &record.sid {
            self.index_add(&sid_index(&record.partition, sid), &hash, record.expires)
                .await?;
        }
        // 3. The record, replacing the same sub + sid atomically.
        let mut inv = CREATE.key(&hash);
        inv.key(keys.index());
        if let Some(sid) = &record.sid {
            inv.key(keys.sid(sid));
        }
        inv.arg(expires_ms)
            .arg(record.expires)
            .arg(now_secs())
            .arg(INVALIDATION_CHANNEL)
            .arg("key")
            .arg(&record.key)
            .arg("partition")
            .arg(&record.partition)
            .arg("sub")
            .arg(&record.sub)
            .arg("created")
            .arg(record.created)
            .arg("renewed")
            .arg(record.renewed)
            .arg("expires")
            .arg(record.expires)
            .arg("version")
            .arg(record.version)
            .arg("ticket")
            .arg(&record.ticket);
        if let Some(sid) = &record.sid {
            inv.arg("sid").arg(sid).arg("sidmap").arg(keys.sid(sid));
        }
        let replaced: Vec<String> = inv.invoke_async(&mut self.con()).await.map_err(map_err)?;
        // 4. Pointers and sid index entries of the sessions it replaced.
        for pair in replaced.chunks(2) {
            if let [old_hash, old_key] = pair {
                let old = SessionRecord {
                    key: old_key.clone(),
                    partition: record.partition.clone(),
                    sub: record.sub.clone(),
                    sid: record.sid.clone(),
                    created: 0,
                    renewed: 0,
                    expires: 0,
                    version: 0,
                    ticket: Vec::new(),
                };
                self.forget(&old, old_hash).await?;
            }
        }
        Ok(())
    }

    async fn do_update(
        &self,
        record: &SessionRecord,
        expected_version: u64,
    ) -> Result<CasOutcome, StoreError> {
        let expires_ms = ms(record.expires);
        // The pointer must outlive the record: extend it first (harmless if the CAS fails).
        let hash = POINTER_TOUCH
            .key(pointer(&record.key))
            .arg(expires_ms)
            .invoke_async::<Value>(&mut self.con())
            .await
            .map_err(map_err)
            .and_then(opt_string)?;
        let Some(hash) = hash else {
            return Ok(CasOutcome::Missing);
        };
        let Some(index) = index_of_session(&hash) else {
            return Err(corrupt("pointer"));
        };
        let (outcome, stored_sid): (i64, Option<String>) = UPDATE
            .key(&hash)
            .key(index)
            .arg(expected_version)
            .arg(record.version)
            .arg(record.renewed)
            .arg(record.expires)
            .arg(expires_ms)
            .arg(&record.ticket)
            .arg(INVALIDATION_CHANNEL)
            .arg(&record.key)
            .invoke_async(&mut self.con())
            .await
            .map_err(map_err)?;
        match outcome {
            1 => {
                // The stored sid, not the caller's: identity is fixed at create. Raising the
                // score keeps the entry from being pruned before the record expires.
                if let Some(sid) = stored_sid {
                    self.index_add(&sid_index(&record.partition, &sid), &hash, record.expires)
                        .await?;
                }
                Ok(CasOutcome::Updated)
            }
            0 => Ok(CasOutcome::Conflict),
            _ => Ok(CasOutcome::Missing),
        }
    }

    async fn do_delete(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        let v: Value = redis::cmd("GET")
            .arg(pointer(key))
            .query_async(&mut self.con())
            .await
            .map_err(map_err)?;
        let Some(hash) = opt_string(v)? else {
            return Ok(None);
        };
        self.delete_at(&hash, None).await
    }

    async fn do_find(
        &self,
        filter: &SessionFilter,
        now: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let records = match (&filter.sub, &filter.sid) {
            (None, None) => return Err(StoreError::InvalidFilter),
            (Some(sub), _) => {
                let keys = SubKeys::new(&filter.partition, sub);
                let v: Value = FIND_SUB
                    .key(keys.index())
                    .arg(now)
                    .invoke_async(&mut self.con())
                    .await
                    .map_err(map_err)?;
                parse_records(v)?
            }
            (None, Some(sid)) => {
                let hashes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(sid_index(&filter.partition, sid))
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .query_async(&mut self.con())
                    .await
                    .map_err(map_err)?;
                if hashes.is_empty() {
                    return Ok(Vec::new());
                }
                // One command per hash (each may live in another slot); the multiplexed
                // connection pipelines them anyway.
                let found = try_join_all(hashes.iter().map(|h| self.hgetall(h))).await?;
                found.into_iter().flatten().collect()
            }
        };
        Ok(records
            .into_iter()
            .filter(|r| {
                r.partition == filter.partition
                    && r.expires > now
                    && filter.sub.as_ref().is_none_or(|s| *s == r.sub)
                    && filter
                        .sid
                        .as_ref()
                        .is_none_or(|s| Some(s) == r.sid.as_ref())
            })
            .collect())
    }

    async fn do_delete_matching(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        match (&filter.sub, &filter.sid) {
            (None, None) => Err(StoreError::InvalidFilter),
            (Some(sub), sid) => {
                let keys = SubKeys::new(&filter.partition, sub);
                let v: Value = DELETE_SUB
                    .key(keys.index())
                    .arg(INVALIDATION_CHANNEL)
                    .arg(if sid.is_some() { "sid" } else { "any" })
                    .arg(sid.as_deref().unwrap_or(""))
                    .invoke_async(&mut self.con())
                    .await
                    .map_err(map_err)?;
                let records = parse_records(v)?;
                for r in &records {
                    self.forget(r, &keys.session(&r.key)).await?;
                }
                Ok(records)
            }
            (None, Some(sid)) => {
                let index = sid_index(&filter.partition, sid);
                let hashes: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.con())
                    .await
                    .map_err(map_err)?;
                let mut out = Vec::new();
                for h in &hashes {
                    if let Some(r) = self.delete_at(h, Some(sid)).await? {
                        out.push(r);
                    } else {
                        // Stale entry (record replaced or expired).
                        redis::cmd("ZREM")
                            .arg(&index)
                            .arg(h)
                            .query_async::<()>(&mut self.con())
                            .await
                            .map_err(map_err)?;
                    }
                }
                Ok(out)
            }
        }
    }

    /// One `SCAN` step over index keys (on `node`, for a cluster); returns the next cursor
    /// and the number of sub index entries pruned.
    async fn prune_step(
        &self,
        node: Option<&(String, u16)>,
        cursor: u64,
        now: i64,
    ) -> Result<(u64, u64), StoreError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg("pc:{*}:idx")
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .arg("TYPE")
            .arg("zset");
        let reply = match (&mut self.con(), node) {
            (Conn::Cluster(c), Some((host, port))) => c
                .route_command(
                    &scan,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    }),
                )
                .await
                .map_err(map_err)?,
            (con, _) => scan.query_async(con).await.map_err(map_err)?,
        };
        let (next, names): (u64, Vec<String>) = redis::from_redis_value(&reply).map_err(map_err)?;
        let counts = try_join_all(names.iter().map(|name| async move {
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(name)
                .arg("-inf")
                .arg(now)
                .query_async::<u64>(&mut self.con())
                .await
                .map_err(map_err)
        }))
        .await?;
        let pruned = names
            .iter()
            .zip(counts)
            .filter(|(name, _)| name.starts_with("pc:{u:"))
            .map(|(_, n)| n)
            .sum();
        Ok((next, pruned))
    }

    /// The primaries of a cluster (`None` for a single server).
    async fn primaries(&self) -> Result<Option<Vec<(String, u16)>>, StoreError> {
        let Conn::Cluster(mut c) = self.con() else {
            return Ok(None);
        };
        let reply = c
            .route_command(
                &redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(map_err)?;
        // [[start, end, [host, port, id, ...], replica...], ...]
        let ranges: Vec<Vec<Value>> = redis::from_redis_value(&reply).map_err(map_err)?;
        let mut nodes = Vec::new();
        for range in ranges {
            if let Some(primary) = range.get(2) {
                let (host, port): (String, u16) = match primary {
                    Value::Array(parts) if parts.len() >= 2 => (
                        redis::from_redis_value(&parts[0]).map_err(map_err)?,
                        redis::from_redis_value(&parts[1]).map_err(map_err)?,
                    ),
                    _ => return Err(corrupt("CLUSTER SLOTS reply")),
                };
                if !nodes.contains(&(host.clone(), port)) {
                    nodes.push((host, port));
                }
            }
        }
        Ok(Some(nodes))
    }
}

/// The node URLs of a `redis+cluster://` / `rediss+cluster://` URL; `None` for other URLs.
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, StoreError>> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return None,
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
        .collect();
    Some(if nodes.is_empty() {
        Err(StoreError::Config("Redis Cluster URL without nodes".into()))
    } else {
        Ok(nodes)
    })
}

/// Forwards `pc:invalidate` messages to `tx` until aborted, reconnecting with backoff.
/// Sends `All` once when a subscription is established and once when it is lost.
async fn subscribe_loop(clients: Vec<Client>, tx: broadcast::Sender<Invalidation>) {
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    const PING_EVERY: Duration = Duration::from_secs(15);
    let mut backoff = Duration::from_millis(100);
    for client in clients.iter().cycle() {
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await;
        match pubsub {
            Ok(Ok(mut pubsub)) => match pubsub.subscribe(INVALIDATION_CHANNEL).await {
                Ok(()) => {
                    // Anything before this point was missed.
                    let _ = tx.send(Invalidation::All);
                    backoff = Duration::from_millis(100);
                    let (mut sink, mut stream) = pubsub.split();
                    let mut ping = tokio::time::interval(PING_EVERY);
                    ping.tick().await;
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => {
                                    if let Ok(key) = msg.get_payload::<String>() {
                                        let _ = tx.send(Invalidation::Key(key));
                                    }
                                }
                                None => break,
                            },
                            _ = ping.tick() => {
                                // A silently dead connection would otherwise never end.
                                let alive = tokio::time::timeout(
                                    RESPONSE_TIMEOUT,
                                    sink.ping::<Value>(),
                                )
                                .await;
                                if !matches!(alive, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                    tracing::warn!("session invalidation subscription lost");
                    let _ = tx.send(Invalidation::All);
                }
                Err(e) => tracing::warn!(error = %e, "session invalidation SUBSCRIBE failed"),
            },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "session invalidation subscriber cannot connect");
            }
            Err(_) => tracing::warn!("session invalidation subscriber connect timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str, now: i64) -> Result<Option<SessionRecord>, StoreError> {
        bounded(async {
            let v: Value = redis::cmd("GET")
                .arg(pointer(key))
                .query_async(&mut self.con())
                .await
                .map_err(map_err)?;
            let Some(hash) = opt_string(v)? else {
                return Ok(None);
            };
            Ok(self
                .hgetall(&hash)
                .await?
                .filter(|r| r.key == key && r.expires > now))
        })
        .await
    }

    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        bounded(self.do_create(record)).await
    }

    async fn update(
        &self,
        record: &SessionRecord,
        expected_version: u64,
    ) -> Result<CasOutcome, StoreError> {
        check_next_version(record, expected_version)?;
        bounded(self.do_update(record, expected_version)).await
    }

    async fn delete(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        bounded(self.do_delete(key)).await
    }

    async fn find(
        &self,
        filter: &SessionFilter,
        now: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        bounded(self.do_find(filter, now)).await
    }

    async fn delete_matching(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        bounded(self.do_delete_matching(filter)).await
    }

    async fn cleanup_expired(&self, now: i64) -> Result<u64, StoreError> {
        // Records expire by their TTL; only index entries are left to prune.
        let nodes = match bounded(self.primaries()).await? {
            Some(primaries) => primaries.into_iter().map(Some).collect(),
            None => vec![None],
        };
        let mut total = 0;
        for node in &nodes {
            let mut cursor = 0;
            loop {
                let (next, pruned) = bounded(self.prune_step(node.as_ref(), cursor, now)).await?;
                total += pruned;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(total)
    }

    async fn claim_once(&self, id: &str, expires: i64) -> Result<bool, StoreError> {
        if expires <= now_secs() {
            return Ok(true);
        }
        bounded(async {
            // The value is this call's own nonce: if the reply to a first attempt was lost and
            // the command is retried, the retry recognises its own claim instead of reporting
            // a replay.
            let got: i64 = CLAIM
                .key(claim_key(id))
                .arg(crate::util::nonce())
                .arg(ms(expires))
                .invoke_async(&mut self.con())
                .await
                .map_err(map_err)?;
            Ok(got == 1)
        })
        .await
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        bounded(async {
            let got: i64 = LEASE_TAKE
                .key(lease_key(name))
                .arg(holder)
                .arg(ttl_ms(ttl))
                .invoke_async(&mut self.con())
                .await
                .map_err(map_err)?;
            Ok(got == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        bounded(async {
            LEASE_RELEASE
                .key(lease_key(name))
                .arg(holder)
                .invoke_async::<i64>(&mut self.con())
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        bounded(async {
            redis::cmd("PING")
                .query_async::<String>(&mut self.con())
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    fn subscribe_invalidations(&self) -> Option<broadcast::Receiver<Invalidation>> {
        // Subscribe before the subscriber starts, so its first `All` is not missed.
        let rx = self.shared.invalidations.subscribe();
        self.shared.subscriber.get_or_init(|| {
            let task = self.shared.runtime.spawn(subscribe_loop(
                self.shared.pubsub_clients.clone(),
                self.shared.invalidations.clone(),
            ));
            AbortOnDrop(task.abort_handle())
        });
        Some(rx)
    }
}
