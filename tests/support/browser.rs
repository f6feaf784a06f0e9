//! What the browser tests share: their prerequisites (Debian's Chromium, playwright-core in
//! `.deps/`, Node.js: a clear failure, never a skip, when one is missing) and running one
//! Playwright script to its end.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// (Chromium, the `node_modules` folder playwright-core is in).
pub fn prerequisites() -> (PathBuf, PathBuf) {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "Chromium is missing at {}: run scripts/setup (scripts/test does) to install Debian's \
         chromium, or set CHROMIUM to a Chromium binary",
        chromium.display()
    );
    let node_modules = repo().join(".deps/node_modules");
    assert!(
        node_modules.join("playwright-core/package.json").is_file(),
        "playwright-core is missing from {}: run scripts/setup (scripts/test does)",
        node_modules.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "Node.js (`node`) is needed to drive the browser: install Node.js ({node:?})"
    );
    (chromium, node_modules)
}

/// Where screenshots go: `HEMVIST_TEST_ARTIFACTS`, or `tests/artifacts/`.
pub fn artifacts() -> PathBuf {
    let dir = std::env::var_os("HEMVIST_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/artifacts"));
    std::fs::create_dir_all(&dir).expect("artifact directory");
    dir
}

/// Runs `tests/browser/{script}` to its end (or kills it after `timeout`); fails the test, with
/// everything it printed, unless it exits 0. What it printed.
pub fn run_script(script: &str, envs: &[(&str, String)], timeout: Duration) -> String {
    let script = repo().join("tests/browser").join(script);
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(&script)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = collect(Box::new(child.stdout.take().expect("stdout")));
    let err = collect(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, mut stderr) = (out.join().unwrap(), err.join().unwrap());
    if status.is_none() {
        stderr.push_str(&format!(
            "\n[{}] killed: the script ran longer than {timeout:?}",
            script.display()
        ));
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser script {} failed (after {:?}):\n---- stdout ----\n{stdout}\n---- stderr ----\n{stderr}",
        script.display(),
        started.elapsed()
    );
    print!("{stdout}");
    stdout
}
