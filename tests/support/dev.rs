//! `hemvist dev` as a process, the way a new user starts it: its data folder somewhere, its
//! ports picked by the system, `dev.json` read once it is written.

use serde_json::Value;

// The caller owns the child and reaps it in `stop_dev`.
#[allow(clippy::zombie_processes)]
pub fn start_dev(
    dir: &std::path::Path,
    data: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, Value) {
    let _ = std::fs::remove_file(data.join("dev.json"));
    let mut child = std::process::Command::new(super::cluster::BIN)
        .args([
            "dev",
            "--data",
            data.to_str().unwrap(),
            "--port-base",
            "0",
            "--contacts",
            "3000",
        ])
        .args(extra)
        .current_dir(dir)
        .env("HEMVIST_GEOIP", super::cluster::npm_geoip())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("dev.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("dev.err")).unwrap())
        .spawn()
        .expect("start hemvist dev");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(data.join("dev.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                return (child, v);
            }
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hemvist dev did not write dev.json:\n{}",
                std::fs::read_to_string(dir.join("dev.err")).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn stop_dev(mut child: std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "hemvist dev exited with {exit}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Ctrl-C did not stop hemvist dev"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
