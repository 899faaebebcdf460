//! Durable key-value persistence on redb under the data dir. Every write is its own transaction
//! committed with `Durability::Immediate`, so a SIGTERM right after an answer loses nothing.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("cannot create data dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store record {key} is not valid JSON: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("store: cannot encode record: {0}")]
    Encode(serde_json::Error),
    #[error("store task failed: {0}")]
    Join(String),
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// One write of [`Store::apply`]: a put (`value` set) or a delete.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub table: String,
    /// Ignored when `sequenced`: the key is then the table's next [`seq_key`].
    pub key: String,
    pub value: Option<Vec<u8>>,
    /// Append to a queue: the key is taken from the table's persisted counter in the same
    /// transaction, so the order is the commit order, whatever the wall clock does.
    pub sequenced: bool,
}

impl WriteOp {
    pub fn put_json<T: Serialize>(table: &str, key: &str, value: &T) -> Result<Self, StoreError> {
        Ok(Self {
            table: table.to_string(),
            key: key.to_string(),
            value: Some(serde_json::to_vec(value).map_err(StoreError::Encode)?),
            sequenced: false,
        })
    }

    /// Appends `value` to the queue `table` under the next sequence key (see [`seq_key`]).
    pub fn enqueue_json<T: Serialize>(table: &str, value: &T) -> Result<Self, StoreError> {
        Ok(Self {
            sequenced: true,
            ..Self::put_json(table, "", value)?
        })
    }

    pub fn delete(table: &str, key: &str) -> Self {
        Self {
            table: table.to_string(),
            key: key.to_string(),
            value: None,
            sequenced: false,
        }
    }
}

/// The table holding each queue's last sequence number (8 bytes, big-endian).
pub const SEQUENCES: &str = "sequences";

/// The queue key of sequence number `n`: `s` and 20 digits. Keys of older versions were
/// time-based (`<20 digits>-<6 digits>`, starting with a digit): they sort before every `s` key,
/// so items queued before an upgrade are still delivered first, in their old order.
pub fn seq_key(n: u64) -> String {
    format!("s{n:020}")
}

/// redb's page cache when `MPM_STORE_CACHE_MIB` is not set: 16 MiB, well inside a 128 MiB pod
/// (redb's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;
/// The environment variable that sets the cache size in MiB (1..=1024).
pub const CACHE_ENV: &str = "MPM_STORE_CACHE_MIB";

/// The cache size for `MPM_STORE_CACHE_MIB`'s value: the default when unset or not a number of
/// MiB in 1..=1024 (logged).
pub fn cache_bytes(env: Option<&str>) -> usize {
    match env.map(str::trim) {
        None | Some("") => DEFAULT_CACHE_BYTES,
        Some(raw) => match raw.parse::<usize>() {
            Ok(mib) if (1..=1024).contains(&mib) => mib << 20,
            _ => {
                tracing::warn!(
                    value = raw,
                    default_mib = DEFAULT_CACHE_BYTES >> 20,
                    "{CACHE_ENV} must be 1..1024; using the default"
                );
                DEFAULT_CACHE_BYTES
            }
        },
    }
}

/// A redb database holding JSON values in string-keyed tables.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) `<data_dir>/<file>`.
    pub fn open(data_dir: &Path, file: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(file);
        let cache = cache_bytes(std::env::var(CACHE_ENV).ok().as_deref());
        let db = Database::builder()
            .set_cache_size(cache)
            .create(&path)
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: e.into(),
            })?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn def(table: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(table)
    }

    /// Applies several writes, possibly to different tables, in one durable transaction.
    pub fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate).map_err(db_err)?;
        for op in ops {
            let key = if op.sequenced {
                let mut seqs = tx.open_table(Self::def(SEQUENCES)).map_err(db_err)?;
                let last = seqs
                    .get(op.table.as_str())
                    .map_err(db_err)?
                    .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                    .map_or(0, u64::from_be_bytes);
                let next = last + 1;
                seqs.insert(op.table.as_str(), next.to_be_bytes().as_slice())
                    .map_err(db_err)?;
                seq_key(next)
            } else {
                op.key.clone()
            };
            let mut t = tx.open_table(Self::def(&op.table)).map_err(db_err)?;
            match &op.value {
                Some(v) => {
                    t.insert(key.as_str(), v.as_slice()).map_err(db_err)?;
                }
                None => {
                    t.remove(key.as_str()).map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Puts and deletes in one table, atomically and durably.
    pub fn write_batch(
        &self,
        table: &str,
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<(), StoreError> {
        let mut ops: Vec<WriteOp> = puts
            .iter()
            .map(|(k, v)| WriteOp {
                table: table.to_string(),
                key: k.clone(),
                value: Some(v.clone()),
                sequenced: false,
            })
            .collect();
        ops.extend(deletes.iter().map(|k| WriteOp::delete(table, k)));
        self.apply(&ops)
    }

    pub fn put_json<T: Serialize>(
        &self,
        table: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(StoreError::Encode)?;
        self.write_batch(table, &[(key.to_string(), bytes)], &[])
    }

    pub fn delete(&self, table: &str, key: &str) -> Result<(), StoreError> {
        self.write_batch(table, &[], &[key.to_string()])
    }

    pub fn get_json<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(Self::def(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        match t.get(key).map_err(db_err)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|source| StoreError::Decode {
                    key: key.to_string(),
                    source,
                }),
            None => Ok(None),
        }
    }

    /// Entries with `start <= key < end` (or all with the prefix when `end` is `None`), in key order,
    /// at most `limit`.
    pub fn range_json<T: DeserializeOwned>(
        &self,
        table: &str,
        start: &str,
        end: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.read_range(
            table,
            (Bound::Included(start), Bound::Unbounded),
            limit,
            |key| match end {
                Some(e) => key < e,
                None => key.starts_with(start),
            },
        )
    }

    /// Up to `limit` entries with keys after `after` (from the first when `None`), in key order:
    /// pages through a queue whose earlier entries may stay.
    pub fn page_after<T: DeserializeOwned>(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.read_range(table, (from, Bound::Unbounded), limit, |_| true)
    }

    /// Like [`Store::page_after`] but undecoded: a corrupt value does not hide the others.
    pub fn page_raw(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(Self::def(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        for item in t.range::<&str>((from, Bound::Unbounded)).map_err(db_err)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(db_err)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Moves the row `key` of `table` (bytes unchanged) to `to`, in one durable transaction: a row
    /// that cannot be decoded is set aside for an operator instead of blocking what follows it.
    pub fn move_row(&self, table: &str, key: &str, to: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate).map_err(db_err)?;
        let moved = {
            let mut from = tx.open_table(Self::def(table)).map_err(db_err)?;
            let bytes = from
                .remove(key)
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            match bytes {
                Some(b) => {
                    let mut dest = tx.open_table(Self::def(to)).map_err(db_err)?;
                    dest.insert(key, b.as_slice()).map_err(db_err)?;
                    true
                }
                None => false,
            }
        };
        tx.commit().map_err(db_err)?;
        Ok(moved)
    }

    fn read_range<T: DeserializeOwned>(
        &self,
        table: &str,
        bounds: (Bound<&str>, Bound<&str>),
        limit: usize,
        keep_going: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(Self::def(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for item in t.range::<&str>(bounds).map_err(db_err)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(db_err)?;
            let key = k.value().to_string();
            if !keep_going(&key) {
                break;
            }
            let value = serde_json::from_slice(v.value()).map_err(|source| StoreError::Decode {
                key: key.clone(),
                source,
            })?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// All entries of a table.
    pub fn list_json<T: DeserializeOwned>(
        &self,
        table: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.range_json(table, "", None, usize::MAX)
    }

    pub fn count(&self, table: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        match tx.open_table(Self::def(table)) {
            Ok(t) => Ok(redb::ReadableTableMetadata::len(&t).map_err(db_err)?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Runs a blocking store operation off the async runtime.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }
}

/// Items a list endpoint answers when the caller names no `limit` (contract: list limits).
pub const DEFAULT_LIST_LIMIT: usize = 500;
/// The largest `limit` a list endpoint accepts.
pub const MAX_LIST_LIMIT: usize = 1000;

/// The query of a list endpoint: `?limit=N&continue=<token from the previous page>`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub continue_after: Option<String>,
}

impl ListQuery {
    /// The page size asked for, or why it is refused (`400`).
    pub fn limit(&self) -> Result<usize, String> {
        match self.limit.as_deref() {
            None | Some("") => Ok(DEFAULT_LIST_LIMIT),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
                _ => Err(format!(
                    "limit={raw:?} must be a number from 1 to {MAX_LIST_LIMIT}"
                )),
            },
        }
    }
}

/// A list answer: `{"items": [...], "continue": "<token>"}`, `continue` only when more follow.
pub fn list_body(items: Vec<serde_json::Value>, next: Option<String>) -> serde_json::Value {
    let mut body = serde_json::json!({ "items": items });
    if let Some(token) = next {
        body["continue"] = serde_json::Value::String(token);
    }
    body
}

impl Store {
    /// One page of a list endpoint: up to `limit` values with keys after `after`, and the key to
    /// continue after when more follow. A row that cannot be decoded is left out with an error
    /// log (it does not make the whole list fail).
    pub fn list_page(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<serde_json::Value>, Option<String>), StoreError> {
        let raw = self.page_raw(table, after, limit.saturating_add(1))?;
        let more = raw.len() > limit;
        let mut items = Vec::with_capacity(raw.len().min(limit));
        let mut last = None;
        for (key, bytes) in raw.into_iter().take(limit) {
            match serde_json::from_slice(&bytes) {
                Ok(v) => items.push(v),
                Err(e) => {
                    tracing::error!(table, key = %key, error = %e, "stored row cannot be decoded; left out of the list")
                }
            }
            last = Some(key);
        }
        Ok((items, if more { last } else { None }))
    }
}

/// A monotonic, sortable key for queues (outbox, dead letters): nanoseconds plus a counter.
pub fn queue_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = chrono::Utc::now()
        .timestamp_nanos_opt()
        .unwrap_or_default()
        .max(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    format!("{nanos:020}-{n:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path(), "t.redb").expect("open");
            s.put_json("m", "a|1", &1u32).expect("put");
            s.put_json("m", "a|2", &2u32).expect("put");
            s.put_json("m", "b|1", &3u32).expect("put");
            s.delete("m", "a|1").expect("delete");
        }
        let s = Store::open(dir.path(), "t.redb").expect("reopen");
        assert_eq!(s.get_json::<u32>("m", "a|2").expect("get"), Some(2));
        assert_eq!(s.get_json::<u32>("m", "a|1").expect("get"), None);
        assert_eq!(s.get_json::<u32>("nope", "x").expect("get"), None);
        let a: Vec<(String, u32)> = s.range_json("m", "a|", None, 100).expect("range");
        assert_eq!(a, vec![("a|2".to_string(), 2)]);
        assert_eq!(s.count("m").expect("count"), 2);
        assert!(queue_key() < queue_key());
    }

    #[test]
    fn sequenced_keys_follow_commit_order_after_legacy_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), "t.redb").expect("open");
        // A key an older version wrote with its clock far ahead (year 2100).
        let legacy = format!("{:020}-{:06}", 4_102_444_800_000_000_000u64, 0);
        s.put_json("q", &legacy, &0u32).expect("put");
        for i in 1..=3u32 {
            s.apply(&[WriteOp::enqueue_json("q", &i).expect("op")])
                .expect("enqueue");
        }
        drop(s);
        let s = Store::open(dir.path(), "t.redb").expect("reopen");
        s.apply(&[
            WriteOp::enqueue_json("q", &4u32).expect("op"),
            WriteOp::enqueue_json("q", &5u32).expect("op"),
        ])
        .expect("enqueue");
        let order: Vec<u32> = s
            .list_json::<u32>("q")
            .expect("list")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(s.list_json::<u32>("q").expect("list")[5].0, seq_key(5));
    }

    #[test]
    fn a_row_moves_aside_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), "t.redb").expect("open");
        s.write_batch("q", &[("a".into(), b"{not json".to_vec())], &[])
            .expect("put");
        s.put_json("q", "b", &1u32).expect("put");
        assert!(s.list_json::<u32>("q").is_err());
        let raw = s.page_raw("q", None, 10).expect("raw");
        assert_eq!(raw.len(), 2);
        assert!(s.move_row("q", "a", "q_quarantine").expect("move"));
        assert!(!s.move_row("q", "a", "q_quarantine").expect("again"));
        assert_eq!(
            s.list_json::<u32>("q").expect("list"),
            vec![("b".into(), 1)]
        );
        assert_eq!(
            s.page_raw("q_quarantine", None, 10).expect("raw"),
            vec![("a".to_string(), b"{not json".to_vec())]
        );
    }

    #[test]
    fn the_cache_fits_a_small_pod() {
        assert_eq!(cache_bytes(None), 16 << 20);
        assert_eq!(cache_bytes(Some("64")), 64 << 20);
        for bad in ["0", "4096", "lots", "-1"] {
            assert_eq!(cache_bytes(Some(bad)), DEFAULT_CACHE_BYTES, "{bad}");
        }
    }

    #[test]
    fn lists_come_in_bounded_pages() {
        let q = |limit: Option<&str>| ListQuery {
            limit: limit.map(String::from),
            continue_after: None,
        };
        assert_eq!(q(None).limit(), Ok(DEFAULT_LIST_LIMIT));
        assert_eq!(q(Some("1000")).limit(), Ok(1000));
        for bad in ["0", "1001", "-1", "x", "99999999999999999999999"] {
            assert!(q(Some(bad)).limit().is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), "t.redb").expect("open");
        for k in ["a", "b", "c"] {
            s.put_json("m", k, &k).expect("put");
        }
        s.write_batch("m", &[("bb".into(), b"{bad".to_vec())], &[])
            .expect("corrupt row");
        let (items, next) = s.list_page("m", None, 2).expect("page");
        assert_eq!(items, vec![serde_json::json!("a"), serde_json::json!("b")]);
        assert_eq!(next.as_deref(), Some("b"));
        let (items, next) = s.list_page("m", Some("b"), 2).expect("page");
        assert_eq!(
            items,
            vec![serde_json::json!("c")],
            "the corrupt row is left out"
        );
        assert_eq!(next, None);
        assert_eq!(
            list_body(vec![], Some("b".into())),
            serde_json::json!({"items": [], "continue": "b"})
        );
    }

    #[test]
    fn pages_after_a_key_and_bounds_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), "t.redb").expect("open");
        for (k, v) in [("1", 1u32), ("2", 2), ("3", 3), ("4", 4)] {
            s.put_json("q", k, &v).expect("put");
        }
        let first: Vec<(String, u32)> = s.page_after("q", None, 2).expect("page");
        assert_eq!(first, vec![("1".into(), 1), ("2".into(), 2)]);
        let next: Vec<(String, u32)> = s.page_after("q", Some("2"), 2).expect("page");
        assert_eq!(next, vec![("3".into(), 3), ("4".into(), 4)]);
        let none: Vec<(String, u32)> = s.page_after("q", Some("4"), 2).expect("page");
        assert!(none.is_empty());
        let bounded: Vec<(String, u32)> = s.range_json("q", "2", Some("4"), 10).expect("range");
        assert_eq!(bounded, vec![("2".into(), 2), ("3".into(), 3)]);
        let absent: Vec<(String, u32)> = s.page_after("nope", None, 2).expect("page");
        assert!(absent.is_empty());
    }
}
