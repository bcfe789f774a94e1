//! The browser tests' harness: Chromium, node and playwright-core (or a failure that says
//! how to get them: these tests never skip), a `node tests/browser/<script>` command with
//! the browser and the screenshot folder set, and a bounded wait for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The browser test folder (an npm package of its own).
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Where the scripts save their screenshots (`target/browser-artifacts/`), created.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// The artifacts folder with this test's screenshots of earlier runs removed (`<prefix>-<screen>.png`
/// for each screen, and `<prefix>-failure*.png`), so that the screenshots found after the
/// run are this run's. Only the named files go: other browser tests share the folder.
pub fn fresh_artifacts(prefix: &str, screens: &[&str]) -> PathBuf {
    let dir = artifacts_dir();
    for screen in screens {
        let _ = std::fs::remove_file(dir.join(format!("{prefix}-{screen}.png")));
    }
    for entry in std::fs::read_dir(&dir).expect("artifacts dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{prefix}-failure")) && name.ends_with(".png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for screen in screens {
        assert!(!dir.join(format!("{prefix}-{screen}.png")).exists(), "could not remove an earlier {prefix}-{screen}.png");
    }
    dir
}

/// Chromium and node (with playwright-core installed), or a failure that says how to get
/// them.
pub fn require_tools() -> (String, String) {
    let chromium = std::env::var("SWITCHBOARD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} not found: run scripts/install-deps.sh (installs Debian's chromium), or set SWITCHBOARD_CHROMIUM"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core/package.json").is_file(),
        "tests/browser/node_modules is missing: run scripts/install-deps.sh (runs npm ci in tests/browser)"
    );
    let node = std::env::var("SWITCHBOARD_NODE").unwrap_or_else(|_| "node".into());
    let version = Command::new(&node).arg("--version").output();
    assert!(version.is_ok_and(|o| o.status.success()), "`{node} --version` failed: install Node.js 20 or later (or set SWITCHBOARD_NODE)");
    (chromium, node)
}

/// `node <script>` in the browser folder, told which Chromium to drive and where to save
/// screenshots, its output piped; the caller adds the script's own settings and spawns it.
pub fn script(node: &str, chromium: &str, script: &str) -> Command {
    let mut command = Command::new(node);
    command
        .arg(script)
        .current_dir(browser_dir())
        .env("SWITCHBOARD_CHROMIUM", chromium)
        .env("SWITCHBOARD_BROWSER_ARTIFACTS", artifacts_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for `child` at most `limit` (killing it then): the scripts bound each of their
/// waits themselves, this only keeps a wedged browser from hanging the suite. Answers its
/// status and the child, whose output is still to be read.
pub async fn wait_bounded(mut child: Child, limit: Duration) -> (ExitStatus, Child) {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait for node") {
                return (status, child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return (child.wait().expect("reap node"), child);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("join")
}

/// Waits for `child` (as [`wait_bounded`]) and answers its status and its output as one
/// report (stdout, then stderr), printed for the test log.
pub async fn run_to_end(child: Child, limit: Duration) -> (ExitStatus, String) {
    let (status, child) = wait_bounded(child, limit).await;
    let output = child.wait_with_output().expect("node output");
    let report = format!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    (status, report)
}

/// The lines a spawned script prints, as they come (read on a thread of their own, so a
/// test can wait for each with a timeout); the stream ends when the script closes stdout.
pub fn stdout_lines(child: &mut Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("the script's stdout is piped");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
