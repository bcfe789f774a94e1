//! The ScyllaDB backend's error paths, without a cluster: the driver talks to a
//! `scylla-proxy` in dry mode, which answers every request itself. PREPARE is answered from
//! the project's own schema (`migrations/scylla/*.cql`), so the driver serialises
//! values exactly as it would for a real node; EXECUTE and BATCH are answered per scenario.
//!
//! What must hold: a write timeout or an unavailable error never becomes an
//! acknowledgement (the store returns an error, so the conversation sends no `SendAck`);
//! the driver never re-sends a conditional write on its own; and the client's retry of the
//! same message is answered as a duplicate of what was stored, never stored twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use scylla_proxy::{
    Condition, Node, Proxy, Reaction, RequestFrame, RequestOpcode, RequestReaction, RequestRule, ResponseFrame, ResponseOpcode, example_db_errors,
};
use sha2::Digest;
use switchboard::store::{ScyllaOptions, ScyllaStore, Store, StoreError, StoredMessage, WriteOp, WriteOutcome};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// CQL protocol v4 bodies

fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

fn put_type(buf: &mut BytesMut, cql_type: &str) {
    match cql_type {
        "bigint" => buf.put_u16(0x0002),
        "blob" => buf.put_u16(0x0003),
        "boolean" => buf.put_u16(0x0004),
        "int" => buf.put_u16(0x0009),
        "uuid" => buf.put_u16(0x000C),
        "text" => buf.put_u16(0x000D),
        "tinyint" => buf.put_u16(0x0014),
        "set<uuid>" => {
            buf.put_u16(0x0022);
            buf.put_u16(0x000C);
        }
        "list<uuid>" => {
            buf.put_u16(0x0020);
            buf.put_u16(0x000C);
        }
        "list<text>" => {
            buf.put_u16(0x0020);
            buf.put_u16(0x000D);
        }
        other => panic!("type {other} not used by the schema"),
    }
}

/// Column metadata with a global table spec.
fn put_metadata(buf: &mut BytesMut, table: &str, columns: &[(String, String)], with_pk_count: bool) {
    buf.put_i32(if columns.is_empty() { 0x0004 } else { 0x0001 });
    buf.put_i32(columns.len() as i32);
    if with_pk_count {
        buf.put_i32(0);
    }
    if !columns.is_empty() {
        put_string(buf, "switchboard");
        put_string(buf, table);
        for (name, cql_type) in columns {
            put_string(buf, name);
            put_type(buf, cql_type);
        }
    }
}

/// A value as the protocol carries it: [int length][bytes].
#[derive(Clone, Debug)]
enum Value {
    Bool(bool),
    BigInt(i64),
    Uuid(Uuid),
    Text(String),
}

fn put_value(buf: &mut BytesMut, v: &Value) {
    match v {
        Value::Bool(b) => {
            buf.put_i32(1);
            buf.put_u8(u8::from(*b));
        }
        Value::BigInt(i) => {
            buf.put_i32(8);
            buf.put_i64(*i);
        }
        Value::Uuid(u) => {
            buf.put_i32(16);
            buf.put_slice(u.as_bytes());
        }
        Value::Text(s) => {
            buf.put_i32(s.len() as i32);
            buf.put_slice(s.as_bytes());
        }
    }
}

fn rows_body(table: &str, columns: &[(String, String)], rows: &[Vec<Value>]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(0x0002);
    buf.put_i32(0x0001);
    buf.put_i32(columns.len() as i32);
    put_string(&mut buf, "switchboard");
    put_string(&mut buf, table);
    for (name, cql_type) in columns {
        put_string(&mut buf, name);
        put_type(&mut buf, cql_type);
    }
    buf.put_i32(rows.len() as i32);
    for row in rows {
        for v in row {
            put_value(&mut buf, v);
        }
    }
    buf.freeze()
}

// ---------------------------------------------------------------------------------------
// The schema, and what a statement binds and returns

/// Every statement of every migration file, in order.
fn migration_statements() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/scylla");
    let mut files: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "cql")).collect();
    files.sort();
    files.iter().flat_map(|f| switchboard::store::scylla::split_cql(&std::fs::read_to_string(f).unwrap())).collect()
}

/// table → partition key columns, from the migration files.
fn partition_keys() -> HashMap<String, Vec<String>> {
    let mut keys = HashMap::new();
    for statement in migration_statements() {
        let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS {keyspace}.") else { continue };
        let (name, body) = rest.split_once(" (").unwrap();
        let pk: Vec<String> = match body.split_once("PRIMARY KEY (") {
            Some((_, key)) if key.starts_with('(') => key[1..].split_once(')').unwrap().0.split(',').map(|c| c.trim().to_owned()).collect(),
            Some((_, key)) => vec![key.split([',', ')']).next().unwrap().trim().to_owned()],
            None => {
                let before = body.split_once(" PRIMARY KEY").unwrap().0;
                vec![before.rsplit(',').next().unwrap().split_whitespace().next().unwrap().to_owned()]
            }
        };
        keys.insert(name.to_owned(), pk);
    }
    keys
}

/// table → [(column, type)], from the migration files (tables and the columns added later).
fn schema() -> HashMap<String, Vec<(String, String)>> {
    let mut tables: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for statement in migration_statements() {
        if let Some(rest) = statement.strip_prefix("ALTER TABLE {keyspace}.") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [table, "ADD", column, cql_type] = words.as_slice() {
                tables.get_mut(*table).unwrap().push((column.to_string(), cql_type.to_string()));
            }
            continue;
        }
        let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS {keyspace}.") else { continue };
        let (name, body) = rest.split_once(" (").unwrap();
        let mut columns = Vec::new();
        for part in body.split(',') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if words.len() >= 2 && words[0] != "PRIMARY" && !words[0].starts_with('(') && !words[0].starts_with(')') {
                columns.push((words[0].to_owned(), words[1].trim_end_matches(')').to_owned()));
            }
        }
        tables.insert(name.to_owned(), columns);
    }
    tables
}

struct Shape {
    table: String,
    binds: Vec<(String, String)>,
    results: Vec<(String, String)>,
}

/// The table a statement reads or writes.
fn table_of(cql: &str) -> String {
    let words: Vec<&str> = cql.split_whitespace().collect();
    let after = |kw: &str| words.iter().position(|w| w.eq_ignore_ascii_case(kw)).map(|i| words[i + 1].trim_matches(|c| c == '(' || c == ','));
    after("FROM").or_else(|| after("INTO")).or_else(|| after("UPDATE")).unwrap_or_default().to_owned()
}

/// What a statement binds (in order) and, for a SELECT, returns.
fn shape(cql: &str, schema: &HashMap<String, Vec<(String, String)>>) -> Shape {
    let table = table_of(cql);
    let columns = schema.get(&table).unwrap_or_else(|| panic!("table {table:?} of {cql:?} is not in the schema"));
    let type_of = |c: &str| columns.iter().find(|(n, _)| n == c).unwrap_or_else(|| panic!("{c} not in {table}")).1.clone();
    let insert_columns: Vec<String> = if cql.starts_with("INSERT") {
        let inside = cql.split_once('(').unwrap().1.split_once(')').unwrap().0;
        inside.split(',').map(|c| c.trim().to_owned()).collect()
    } else {
        Vec::new()
    };
    let mut binds = Vec::new();
    let mut values_seen = 0;
    for (i, _) in cql.match_indices('?') {
        let before = cql[..i].trim_end();
        // `token(k) > token(?)`: read as `token(k) > ?`, a bind of the key column.
        let before = before.strip_suffix("token(").map(str::trim_end).unwrap_or(before);
        let last_word = before.split_whitespace().last().unwrap_or("");
        let bind = if last_word == "TTL" || last_word == "LIMIT" {
            ("[limit]".to_owned(), "int".to_owned())
        } else if last_word == "TIMESTAMP" {
            ("[timestamp]".to_owned(), "bigint".to_owned())
        } else if last_word == "IN" {
            // `column IN ?`: one bound list of the column's type.
            let column = before.trim_end_matches(last_word).split_whitespace().last().unwrap().to_owned();
            let t = format!("list<{}>", type_of(&column));
            (column, t)
        } else if ["=", "<", ">", "<=", ">="].contains(&last_word) {
            let column = before.trim_end_matches(last_word).split_whitespace().last().unwrap().to_owned();
            let column = column.trim_start_matches("token(").trim_end_matches(')').to_owned();
            let t = type_of(&column);
            (column, t)
        } else {
            let column = insert_columns[values_seen].clone();
            values_seen += 1;
            let t = type_of(&column);
            (column, t)
        };
        binds.push(bind);
    }
    let results = if cql.starts_with("SELECT") {
        let list = cql.trim_start_matches("SELECT").split(" FROM ").next().unwrap();
        list.split(',').map(|c| c.trim()).map(|c| (c.to_owned(), type_of(c))).collect()
    } else {
        Vec::new()
    };
    Shape { table, binds, results }
}

fn statement_id(cql: &str) -> Vec<u8> {
    sha2::Sha256::digest(cql.as_bytes())[..16].to_vec()
}

// ---------------------------------------------------------------------------------------
// A dry-mode node that answers from the schema plus a scenario

/// What the scenario answers to an EXECUTE or BATCH: None = the default (empty rows for a
/// SELECT, "applied" for a conditional write).
type Scenario = dyn Fn(&str, RequestOpcode, &RequestFrame) -> Option<ResponseFrame> + Send + Sync;

struct FakeNode {
    addr: SocketAddr,
    _proxy: scylla_proxy::RunningProxy,
    /// CQL text of every EXECUTE, in order ("BATCH" for batches).
    seen: Arc<Mutex<Vec<String>>>,
    /// CQL text of every PREPARE.
    prepared: Arc<Mutex<HashMap<Vec<u8>, String>>>,
}

async fn fake_node(scenario: Arc<Scenario>) -> FakeNode {
    let schema = Arc::new(schema());
    let by_id: Arc<Mutex<HashMap<Vec<u8>, String>>> = Arc::default();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let answer = {
        let (schema, by_id, seen) = (schema.clone(), by_id.clone(), seen.clone());
        move |frame: RequestFrame| -> ResponseFrame {
            let params = frame.params.for_response();
            let result = |body: Bytes| ResponseFrame::new(params, ResponseOpcode::Result, body);
            match frame.opcode {
                RequestOpcode::Prepare => {
                    let len = u32::from_be_bytes(frame.body[..4].try_into().unwrap()) as usize;
                    let cql = std::str::from_utf8(&frame.body[4..4 + len]).unwrap().to_owned();
                    if !schema.contains_key(&table_of(&cql)) {
                        // The driver's own metadata queries (system tables): not here.
                        return ResponseFrame::forged_error(frame.params, example_db_errors::server_error(), None).unwrap();
                    }
                    let shape = shape(&cql, &schema);
                    let id = statement_id(&cql);
                    by_id.lock().unwrap().insert(id.clone(), cql);
                    let mut buf = BytesMut::new();
                    buf.put_i32(0x0004);
                    buf.put_u16(id.len() as u16);
                    buf.put_slice(&id);
                    put_metadata(&mut buf, &shape.table, &shape.binds, true);
                    put_metadata(&mut buf, &shape.table, &shape.results, false);
                    result(buf.freeze())
                }
                RequestOpcode::Query => {
                    let len = u32::from_be_bytes(frame.body[..4].try_into().unwrap()) as usize;
                    let cql = std::str::from_utf8(&frame.body[4..4 + len]).unwrap();
                    if let Some(ks) = cql.strip_prefix("USE ") {
                        let mut buf = BytesMut::new();
                        buf.put_i32(0x0003);
                        put_string(&mut buf, ks.trim_matches('"'));
                        return result(buf.freeze());
                    }
                    // Topology and schema queries of the control connection: "no such thing";
                    // the driver then uses the contact point as the cluster.
                    ResponseFrame::forged_error(frame.params, example_db_errors::server_error(), None).unwrap()
                }
                RequestOpcode::Execute | RequestOpcode::Batch => {
                    let cql = if frame.opcode == RequestOpcode::Batch {
                        "BATCH".to_owned()
                    } else {
                        let len = u16::from_be_bytes(frame.body[..2].try_into().unwrap()) as usize;
                        let id = &frame.body[2..2 + len];
                        let found = by_id.lock().unwrap().get(id).cloned();
                        found.unwrap_or_else(|| {
                            panic!("EXECUTE of an unknown statement id {id:02x?}; body {:02x?}", &frame.body[..frame.body.len().min(40)])
                        })
                    };
                    seen.lock().unwrap().push(cql.clone());
                    if let Some(response) = scenario(&cql, frame.opcode, &frame) {
                        return response;
                    }
                    if cql.contains(" IF ") || cql == "BATCH" {
                        return result(rows_body("lwt", &[("[applied]".into(), "boolean".into())], &[vec![Value::Bool(true)]]));
                    }
                    let shape = shape(&cql, &schema);
                    if shape.results.is_empty() {
                        let mut buf = BytesMut::new();
                        buf.put_i32(0x0001);
                        return result(buf.freeze());
                    }
                    result(rows_body(&shape.table, &shape.results, &[]))
                }
                _ => ResponseFrame::forged_error(frame.params, example_db_errors::protocol_error(), None).unwrap(),
            }
        }
    };
    let rules = vec![
        RequestRule(
            Condition::RequestOpcode(RequestOpcode::Options),
            RequestReaction::forge_response(Arc::new(|frame: RequestFrame| ResponseFrame::forged_supported(frame.params, &HashMap::new()).unwrap())),
        ),
        RequestRule(
            Condition::or(Condition::RequestOpcode(RequestOpcode::Startup), Condition::RequestOpcode(RequestOpcode::Register)),
            RequestReaction::forge_response(Arc::new(|frame: RequestFrame| ResponseFrame::forged_ready(frame.params))),
        ),
        RequestRule(Condition::True, RequestReaction::forge_response(Arc::new(answer))),
    ];
    let proxy = Proxy::builder().with_node(Node::builder().proxy_address(addr).request_rules(rules).build_dry_mode()).build().run().await.unwrap();
    FakeNode { addr, _proxy: proxy, seen, prepared: by_id }
}

async fn store_on(node: &FakeNode) -> ScyllaStore {
    let mut options = ScyllaOptions::new(vec![node.addr.to_string()], "switchboard".into());
    options.request_timeout = std::time::Duration::from_secs(2);
    ScyllaStore::connect(&options).await.expect("connect through the proxy")
}

fn message(seq: u64) -> StoredMessage {
    StoredMessage {
        conversation_id: switchboard::ids::ConversationId::from_u128(7),
        seq,
        sender_user_id: switchboard::ids::UserId::from_u128(8),
        sender_device_id: switchboard::ids::DeviceId::from_u128(9),
        client_msg_id: "retried-send".into(),
        server_time_ms: switchboard::store::now_ms(),
        payload: Bytes::from_static(b"hello"),
        event: None,
        kind: Default::default(),
        reference_seq: 0,
        deleted: false,
        attachments: Vec::new(),
    }
}

fn count(seen: &Mutex<Vec<String>>, what: &str) -> usize {
    seen.lock().unwrap().iter().filter(|cql| cql.contains(what)).count()
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// The log batch times out (WriteTimeout: the write may or may not have happened). The
/// store reports an error (no ack), the driver does not re-send the batch, and the retry of
/// the same message, finding its idempotency key claimed and the message in the log (the
/// timed-out write did land), answers `Duplicate` without writing anything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_timeout_is_not_acknowledged_and_its_retry_is_not_stored_twice() {
    let m = message(1);
    let landed = Arc::new(AtomicUsize::new(0));
    let scenario: Arc<Scenario> = {
        let (landed, m) = (landed.clone(), m.clone());
        Arc::new(move |cql: &str, _, frame: &RequestFrame| {
            let result = |body| Some(ResponseFrame::new(frame.params.for_response(), ResponseOpcode::Result, body));
            if cql == "BATCH" {
                // The write reaches the replicas but the coordinator gives up waiting.
                landed.fetch_add(1, Ordering::SeqCst);
                return Some(ResponseFrame::forged_error(frame.params, example_db_errors::write_timeout(), None).unwrap());
            }
            if cql.starts_with("INSERT INTO message_dedup") && landed.load(Ordering::SeqCst) > 0 {
                let columns: Vec<(String, String)> = [("[applied]", "boolean"), ("seq", "bigint"), ("server_time_ms", "bigint")]
                    .iter()
                    .map(|(n, t)| (n.to_string(), t.to_string()))
                    .collect();
                return result(rows_body(
                    "message_dedup",
                    &columns,
                    &[vec![Value::Bool(false), Value::BigInt(1), Value::BigInt(m.server_time_ms as i64)]],
                ));
            }
            if cql.starts_with("SELECT sender_user_id, client_msg_id, server_time_ms FROM messages") && landed.load(Ordering::SeqCst) > 0 {
                let columns: Vec<(String, String)> = [("sender_user_id", "uuid"), ("client_msg_id", "text"), ("server_time_ms", "bigint")]
                    .iter()
                    .map(|(n, t)| (n.to_string(), t.to_string()))
                    .collect();
                return result(rows_body(
                    "messages",
                    &columns,
                    &[vec![Value::Uuid(m.sender_user_id.uuid()), Value::Text(m.client_msg_id.clone()), Value::BigInt(m.server_time_ms as i64)]],
                ));
            }
            None
        })
    };
    let node = fake_node(scenario).await;
    let store = store_on(&node).await;

    let first = store.apply(vec![WriteOp::Append(m.clone())]).await;
    assert!(matches!(first, Err(StoreError::Backend(_))), "a timed-out write must not be reported as stored: {first:?}");
    assert_eq!(count(&node.seen, "BATCH"), 1, "the driver must not re-send a conditional batch by itself");

    let retry = store.apply(vec![WriteOp::Append(m.clone())]).await.expect("retry");
    assert_eq!(retry, vec![WriteOutcome::Duplicate { seq: 1, server_time_ms: m.server_time_ms }]);
    assert_eq!(count(&node.seen, "BATCH"), 1, "the retry wrote nothing: the message is stored once");
}

/// Not enough replicas alive for the idempotency claim (Unavailable: nothing happened).
/// The store reports an error and never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_replicas_fail_the_send_before_anything_is_written() {
    let scenario: Arc<Scenario> = Arc::new(|cql: &str, _, frame: &RequestFrame| {
        cql.starts_with("INSERT INTO message_dedup")
            .then(|| ResponseFrame::forged_error(frame.params, example_db_errors::unavailable(), None).unwrap())
    });
    let node = fake_node(scenario).await;
    let store = store_on(&node).await;
    let result = store.apply(vec![WriteOp::Append(message(1))]).await;
    assert!(matches!(result, Err(StoreError::Backend(ref e)) if e.contains("scylla")), "{result:?}");
    assert_eq!(count(&node.seen, "INSERT INTO message_dedup"), 1, "a conditional write is not retried by the driver");
    assert_eq!(count(&node.seen, "BATCH"), 0, "nothing reached the log");
}

/// Another sequencer took the seq first (the log's condition is not met): `SeqConflict`,
/// and the idempotency key is released so the client's retry can be stored at another seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_race_for_a_seq_is_a_conflict_and_releases_the_key() {
    let scenario: Arc<Scenario> = Arc::new(|cql: &str, _, frame: &RequestFrame| {
        (cql == "BATCH").then(|| {
            let columns = vec![("[applied]".to_owned(), "boolean".to_owned()), ("last_seq".to_owned(), "bigint".to_owned())];
            ResponseFrame::new(
                frame.params.for_response(),
                ResponseOpcode::Result,
                rows_body("messages", &columns, &[vec![Value::Bool(false), Value::BigInt(1)]]),
            )
        })
    });
    let node = fake_node(scenario).await;
    let store = store_on(&node).await;
    let outcome = store.apply(vec![WriteOp::Append(message(1))]).await.expect("apply");
    assert_eq!(outcome, vec![WriteOutcome::SeqConflict]);
    assert_eq!(count(&node.seen, "DELETE FROM message_dedup"), 1, "the claim is given back");
}

/// Every statement the store prepares binds its table's whole partition key, so the
/// driver can route it to a replica's shard (token-aware) and no statement scans a table
/// (but the media sweep's paged walk);
/// and with every write applied, an append goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_binds_its_partition_key() {
    let node = fake_node(Arc::new(|_: &str, _, _: &RequestFrame| None)).await;
    let store = store_on(&node).await;
    assert_eq!(store.backend(), "scylla");
    let schema = schema();
    let keys = partition_keys();
    let prepared: Vec<String> = node.prepared.lock().unwrap().values().cloned().collect();
    assert!(prepared.len() > 40, "{} statements prepared", prepared.len());
    // The media sweep's walk over the media table (paged by token, off the request path)
    // is the one statement that reads more than a partition.
    const SCANS: [&str; 2] =
        ["SELECT media_id, record FROM media LIMIT ?", "SELECT media_id, record FROM media WHERE token(media_id) > token(?) LIMIT ?"];
    for cql in prepared.iter().filter(|c| !SCANS.contains(&c.as_str())) {
        let s = shape(cql, &schema);
        let bound: Vec<&str> = s.binds.iter().map(|(c, _)| c.as_str()).collect();
        for key in &keys[&s.table] {
            let equality = cql.contains(&format!("{key} = ?")) || (cql.starts_with("INSERT") && bound.contains(&key.as_str()));
            assert!(equality, "{cql:?} does not bind partition key column {key}");
        }
    }
    let m = message(1);
    assert_eq!(store.apply(vec![WriteOp::Append(m)]).await.expect("apply"), vec![WriteOutcome::Appended]);
    assert_eq!(count(&node.seen, "BATCH"), 1);
}
