//! Choosing a store from one string, as operators write it on the command line, in the
//! environment or in the config file:
//! - `embedded:<dir>[?cache_mb=N&checkpoint_secs=S&commit_linger_us=U]`: the redb file in
//!   `<dir>` (single node), with a page cache of N MiB (default
//!   [`EmbeddedOptions::DEFAULT_CACHE_MB`]), a checkpoint at least every S seconds (default
//!   [`EmbeddedOptions::DEFAULT_CHECKPOINT_SECS`]) and a group commit that waits up to U
//!   µs for more writes (default 0, see [`EmbeddedOptions::commit_linger`]);
//! - `postgres://user:pass@host:port/db[?pool_size=N&sslmode=…&sslrootcert=…&...]`: a shared
//!   PostgreSQL database (TLS as libpq: see `pg_tls`);
//! - `scylla://[user:pass@]host1[:port],host2/keyspace`: a ScyllaDB (or Cassandra) cluster.

use std::path::PathBuf;
use std::sync::Arc;

use super::{EmbeddedOptions, EmbeddedStore, PostgresOptions, PostgresStore, ScyllaOptions, ScyllaStore, Store, StoreError};

/// Where durable state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// redb file in a directory.
    Embedded {
        /// The data directory.
        dir: PathBuf,
        /// Cache size and the like.
        options: EmbeddedOptions,
    },
    /// A PostgreSQL database.
    Postgres {
        /// Connection URL as tokio-postgres understands it (our own parameters removed).
        url: String,
        /// Most pooled connections.
        pool_size: usize,
    },
    /// A ScyllaDB cluster.
    Scylla {
        /// Contact points and keyspace.
        options: ScyllaOptions,
    },
}

impl PartialEq for ScyllaOptions {
    fn eq(&self, other: &Self) -> bool {
        self.hosts == other.hosts && self.keyspace == other.keyspace && self.credentials == other.credentials
    }
}

impl Eq for ScyllaOptions {}

impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Shows a spec without its password, for logs and errors.
impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Embedded { dir, options } if *options == EmbeddedOptions::default() => write!(f, "embedded:{}", dir.display()),
            StoreSpec::Embedded { dir, options } => write!(
                f,
                "embedded:{}?cache_mb={}&checkpoint_secs={}&commit_linger_us={}",
                dir.display(),
                options.cache_bytes >> 20,
                options.checkpoint_interval.as_secs(),
                options.commit_linger.as_micros()
            ),
            StoreSpec::Postgres { url, .. } => f.write_str(&redact(url)),
            StoreSpec::Scylla { options } => {
                let user = options.credentials.as_ref().map(|(u, _)| format!("{u}:***@")).unwrap_or_default();
                write!(f, "scylla://{user}{}/{}", options.hosts.join(","), options.keyspace)
            }
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            let masked = if credentials.contains(':') { format!("{user}:***") } else { user.to_owned() };
            if tail.is_empty() && !rest.contains('/') { format!("{scheme}://{masked}@{host}") } else { format!("{scheme}://{masked}@{host}/{tail}") }
        }
        None => url.to_owned(),
    }
}

impl StoreSpec {
    /// Parses `embedded:<dir>[?cache_mb=N&checkpoint_secs=S&commit_linger_us=U]`, a `postgres://` / `postgresql://` URL or a
    /// `scylla://` one.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("embedded:") {
            let (dir, query) = rest.split_once('?').map_or((rest, None), |(d, q)| (d, Some(q)));
            if dir.is_empty() {
                return Err("embedded:<dir> needs a directory".into());
            }
            let mut options = EmbeddedOptions::default();
            for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("cache_mb", n)) => {
                        let mb: usize = n
                            .parse()
                            .ok()
                            .filter(|n| (EmbeddedOptions::MIN_CACHE_MB..=1 << 20).contains(n))
                            .ok_or_else(|| format!("cache_mb {n:?}: expected {} to 1048576 (MiB)", EmbeddedOptions::MIN_CACHE_MB))?;
                        options.cache_bytes = mb << 20;
                    }
                    Some(("checkpoint_secs", n)) => {
                        let secs: u64 =
                            n.parse().ok().filter(|n| (1..=3600).contains(n)).ok_or_else(|| format!("checkpoint_secs {n:?}: expected 1 to 3600"))?;
                        options.checkpoint_interval = std::time::Duration::from_secs(secs);
                    }
                    Some(("commit_linger_us", n)) => {
                        let max = EmbeddedOptions::MAX_COMMIT_LINGER_US;
                        let us: u64 = n.parse().ok().filter(|n| *n <= max).ok_or_else(|| format!("commit_linger_us {n:?}: expected 0 to {max}"))?;
                        options.commit_linger = std::time::Duration::from_micros(us);
                    }
                    _ => {
                        return Err(format!(
                            "embedded store: unknown parameter {pair:?} (expected cache_mb=N, checkpoint_secs=N or commit_linger_us=N)"
                        ));
                    }
                }
            }
            return Ok(StoreSpec::Embedded { dir: PathBuf::from(dir), options });
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let (base, query) = s.split_once('?').map_or((s, None), |(b, q)| (b, Some(q)));
            let mut pool_size = PostgresOptions::default().pool_size;
            let mut kept = Vec::new();
            for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("pool_size", n)) => {
                        pool_size =
                            n.parse().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| format!("pool_size {n:?}: expected 1 to 1000"))?;
                    }
                    _ => kept.push(pair),
                }
            }
            let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
            // sslmode and sslrootcert are ours (libpq's meaning); the rest is the driver's.
            let (driver_url, _) = super::pg_tls::split_url(&url).map_err(|e| format!("{}: {e}", redact(&url)))?;
            driver_url.parse::<tokio_postgres::Config>().map_err(|e| format!("{}: {e}", redact(&url)))?;
            return Ok(StoreSpec::Postgres { url, pool_size });
        }
        if let Some(rest) = s.strip_prefix("scylla://") {
            let (credentials, rest) = match rest.rsplit_once('@') {
                Some((c, r)) => {
                    let (user, password) = c.split_once(':').ok_or("scylla://user:password@…: the password is missing")?;
                    (Some((user.to_owned(), password.to_owned())), r)
                }
                None => (None, rest),
            };
            let (hosts, keyspace) = rest.split_once('/').ok_or_else(|| format!("{}: expected scylla://host1,host2/keyspace", redact(s)))?;
            let hosts: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
            if hosts.is_empty() || keyspace.is_empty() || !keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{}: expected scylla://host1,host2/keyspace (keyspace: letters, digits, _)", redact(s)));
            }
            let mut options = ScyllaOptions::new(hosts, keyspace.to_owned());
            options.credentials = credentials;
            return Ok(StoreSpec::Scylla { options });
        }
        Err(format!("store {:?}: expected embedded:<dir>, postgres://user@host:port/db or scylla://host1,host2/keyspace", redact(s)))
    }

    /// A directory for this node's local files (the generated admin token): the embedded
    /// store's directory, else `./switchboard-data`.
    pub fn local_dir(&self) -> PathBuf {
        match self {
            StoreSpec::Embedded { dir, .. } => dir.clone(),
            StoreSpec::Postgres { .. } | StoreSpec::Scylla { .. } => PathBuf::from("./switchboard-data"),
        }
    }

    /// Opens the store, creating or upgrading its schema (for PostgreSQL: connects and
    /// applies pending migrations). A ScyllaDB schema is applied only by
    /// `switchboard store migrate` (keyspace replication is an operator's decision); here
    /// the store connects and prepares its statements, which fails if the schema is missing.
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreSpec::Embedded { dir, options } => Arc::new(EmbeddedStore::open_with(dir, options)?),
            StoreSpec::Postgres { url, pool_size } => {
                let store = PostgresStore::connect(url, PostgresOptions { pool_size: *pool_size, ..Default::default() }).await?;
                store.migrate().await?;
                Arc::new(store)
            }
            StoreSpec::Scylla { options } => {
                Arc::new(ScyllaStore::connect(options).await.map_err(|e| {
                    StoreError::Backend(format!("{e} (has the schema been applied with `switchboard store migrate --store {self}`?)"))
                })?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_and_keeps_secrets_out_of_messages() {
        let default = StoreSpec::parse("embedded:/tmp/x").unwrap();
        assert_eq!(default, StoreSpec::Embedded { dir: "/tmp/x".into(), options: EmbeddedOptions::default() });
        assert_eq!(default.to_string(), "embedded:/tmp/x");
        let small = StoreSpec::parse("embedded:/tmp/x?cache_mb=32&checkpoint_secs=5&commit_linger_us=500").unwrap();
        let options = EmbeddedOptions {
            cache_bytes: 32 << 20,
            checkpoint_interval: std::time::Duration::from_secs(5),
            commit_linger: std::time::Duration::from_micros(500),
        };
        assert_eq!(small, StoreSpec::Embedded { dir: "/tmp/x".into(), options });
        assert_eq!(small.to_string(), "embedded:/tmp/x?cache_mb=32&checkpoint_secs=5&commit_linger_us=500");
        assert_eq!(StoreSpec::parse(&small.to_string()).unwrap(), small);
        assert!(StoreSpec::parse("embedded:/tmp/x?checkpoint_secs=0").is_err());
        assert!(StoreSpec::parse("embedded:/tmp/x?commit_linger_us=100001").is_err());
        assert!(StoreSpec::parse("embedded:/tmp/x?cache_mb=0").is_err());
        assert!(StoreSpec::parse("embedded:/tmp/x?cache=32").is_err());
        let spec = StoreSpec::parse("postgres://sb:hunter2@db:5432/switchboard?pool_size=4&sslmode=disable").unwrap();
        assert_eq!(spec, StoreSpec::Postgres { url: "postgres://sb:hunter2@db:5432/switchboard?sslmode=disable".into(), pool_size: 4 });
        assert_eq!(spec.to_string(), "postgres://sb:***@db:5432/switchboard?sslmode=disable");
        assert!(StoreSpec::parse("embedded:").is_err());
        assert!(StoreSpec::parse("postgres://h/db?pool_size=0").is_err());
        let scylla = StoreSpec::parse("scylla://sb:hunter2@10.0.0.1,10.0.0.2:9042/switchboard").unwrap();
        assert_eq!(scylla.to_string(), "scylla://sb:***@10.0.0.1,10.0.0.2:9042/switchboard");
        assert!(StoreSpec::parse("scylla://h1/bad-keyspace").is_err());
        assert!(StoreSpec::parse("scylla://h1").is_err());
        let err = StoreSpec::parse("mysql://u:hunter2@h/db").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
