//! The HTTP API against its own OpenAPI document (`GET /v1/openapi.json`, generated from
//! the handlers by utoipa): schemathesis generates requests from the document (valid and
//! invalid bodies, paths, queries, methods; stateful sequences) against a private server
//! and checks every answer: no 5xx, statuses, content types and bodies as documented.
//! The public operations run against the public listener with a device's token, the
//! admin ones against the admin listener with the admin token.
//!
//! schemathesis comes from PyPI through `scripts/install-deps.sh` (a pinned virtual
//! environment); `SWITCHBOARD_SCHEMATHESIS` may name another binary.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{ADMIN_TOKEN, TestServer};

/// The schemathesis binary that install-deps.sh installs.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let venv = std::env::var_os("SWITCHBOARD_SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/switchboard/schemathesis-4.32.5"));
    let bin = venv.join("bin/schemathesis");
    assert!(bin.is_file(), "{} not found: run scripts/install-deps.sh (or set SWITCHBOARD_SCHEMATHESIS)", bin.display());
    bin
}

/// One schemathesis run; panics with its report unless it passed.
fn run(spec: &std::path::Path, base: &str, tag: &str, token: &str, extra: &[&str]) {
    // schemathesis ORs include filters: a tag and a path together would select every
    // operation of the tag. A run that names its paths does not name the tag.
    let names_paths = extra.iter().any(|a| a.starts_with("--include-path"));
    let tag_filter: &[&str] = if names_paths { &[] } else { &["--include-tag", tag] };
    let output = Command::new(schemathesis())
        .arg("--config-file")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml"))
        .arg("run")
        .arg(spec)
        .args(["--url", base, "--header", &format!("Authorization: Bearer {token}")])
        .args(tag_filter)
        // Short and reproducible in CI: a fixed seed, a bounded number of examples per
        // operation and phase.
        .args(["--max-examples", "40", "--seed", "20261201", "--checks", "all", "--no-color"])
        .args(extra)
        // Our hooks only (a tus chunk's media type), never a caller's.
        .env("SCHEMATHESIS_HOOKS", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis_hooks.py"))
        // Its cache (`.schemathesis/`) goes next to the spec, not into the repository, so
        // no earlier run's findings are replayed.
        .current_dir(spec.parent().unwrap_or(std::path::Path::new(".")))
        .output()
        .expect("run schemathesis");
    let report = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found failures on the {tag} operations:\n{report}");
    assert!(report.contains("passed"), "schemathesis ran no test:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_matches_its_openapi_document_under_generated_requests() {
    // Media limits far away: generated creations must not run into a user's upload rate or
    // quota (their refusals are tested in tests/media.rs).
    // Sign-up limits off too: generated registrations and verifications should reach the
    // handlers' own checks, not a 429 after the first hundred (the limits have their own
    // tests, tests/signup_limits.rs).
    let server = TestServer::start_with(&[
        "--media-uploads-per-minute",
        "1000000",
        "--media-quota-bytes",
        "1000000000000000",
        "--code-cooldown-secs",
        "0",
        "--codes-per-number-per-day",
        "0",
        "--guesses-per-number-per-hour",
        "0",
        "--registrations-per-address-per-hour",
        "0",
        "--verifications-per-address-per-hour",
        "0",
    ]);
    let users = server.provision(1).await;
    let spec_text = reqwest::get(format!("http://{}/v1/openapi.json", server.http)).await.expect("openapi").text().await.expect("body");
    let spec: serde_json::Value = serde_json::from_str(&spec_text).expect("the document is JSON");
    assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "not OpenAPI 3: {}", spec["openapi"]);
    let spec_path = server.dir.path().join("openapi.json");
    std::fs::write(&spec_path, &spec_text).expect("write spec");

    // /v1/ws is an upgrade to the binary protocol, not a JSON operation.
    run(
        &spec_path,
        &format!("http://{}", server.http),
        "public",
        &users[0].token,
        // Not here: /v1/ws (an upgrade to the binary protocol, not a JSON operation); the
        // operations whose valid inputs a schema cannot say (runs below); and
        // /v1/pairing/claim, a long poll: waiting up to 30 s for an approval is its
        // contract, past schemathesis's 10 s request timeout (tests/pairing.rs checks its
        // answers: 200, 202, 404 and the refusals).
        &[
            "--exclude-path-regex",
            "^/v1/(ws|keys/upload|media|media/public|accounts/register|accounts/verify|account/number|account/number/verify|account/delete|profile|pairing/claim)$",
        ],
    );
    // A phone number is valid when its country's numbering plan can assign it
    // (libphonenumber's metadata), a deletion only with the account's own number, and a
    // profile photo when its media ids are the caller's public images, which a schema
    // cannot say: a refusal of a generated number (`invalid_phone`, `wrong_number`) or
    // photo is not a bug. Every other check still runs on them.
    run(
        &spec_path,
        &format!("http://{}", server.http),
        "public",
        &users[0].token,
        &[
            "--include-path-regex",
            "^/v1/(accounts/register|accounts/verify|account/number|account/number/verify|account/delete|profile)$",
            "--exclude-checks",
            "positive_data_acceptance",
        ],
    );
    // A creation is accepted only within the server's configured maximum size, and a
    // public image only when its bytes decode as an image: neither can a schema say, so a
    // refusal of generated data there is not a bug. Every other check still runs on them.
    run(
        &spec_path,
        &format!("http://{}", server.http),
        "public",
        &users[0].token,
        &["--include-path-regex", "^/v1/media(/public)?$", "--exclude-checks", "positive_data_acceptance"],
    );
    // A key upload is valid only with Ed25519 signatures over the keys (docs/e2ee.md),
    // which a schema cannot say: a refusal of generated keys is not a bug. Every other
    // check still runs on it.
    run(
        &spec_path,
        &format!("http://{}", server.http),
        "public",
        &users[0].token,
        &["--include-path", "/v1/keys/upload", "--exclude-checks", "positive_data_acceptance"],
    );
    // Provisioning's valid phone range depends on two fields together (prefix length and
    // first number), which a schema cannot say: a refusal of such a pair is not a bug.
    run(&spec_path, &format!("http://{}", server.admin), "admin", ADMIN_TOKEN, &["--exclude-checks", "positive_data_acceptance"]);
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked under generated requests:\n{log}");
}
