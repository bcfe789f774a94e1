//! Private instances of the services Switchboard can use (PostgreSQL, Redis, an
//! S3-compatible server), for tests, benchmarks and local trials: each one lives in a
//! temporary directory on a kernel-chosen port of 127.0.0.1 and is stopped when dropped.
//! Nothing here is used by a running server; `cluster` assembles them into a local
//! N-node cluster for `switchboard cluster local`, `console` is that command's terminal,
//! and `nemesis` runs faults and traffic on such a cluster and checks what devices saw.

pub mod cluster;
pub mod console;
pub mod nemesis;
pub mod postgres;
pub mod redis;
pub mod s3;

pub use postgres::PrivatePostgres;
pub use redis::PrivateRedis;
pub use s3::PrivateS3;
