//! A node whose data folder is on a small file system of its own: a tmpfs the test mounts
//! (tests run as root on CI machines; a test that cannot mount one fails, saying so, and never
//! skips), a filler file beside the node's data that takes the space, and the unmount when the
//! test is done.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cluster::Cluster;

/// A mounted tmpfs; lazily unmounted when dropped (after the cluster's processes are gone, if it
/// is declared after the cluster).
pub struct Tmpfs {
    pub root: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` at `root` (created if missing).
    pub fn mount(root: &Path, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(root).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(root)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs a small file system of its own and could not mount a tmpfs at {} \
             (run the tests as root, or where `mount -t tmpfs` is allowed): {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs {
            root: root.to_path_buf(),
        }
    }

    /// Fills the file system with `filler` until a write fails, then gives back `leave` bytes;
    /// the filler's path.
    pub fn fill_leaving(&self, leave: u64) -> PathBuf {
        let path = self.root.join("filler");
        let mut f = File::create(&path).expect("create the filler");
        let chunk = vec![0xa5u8; 256 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = f.flush();
        f.set_len(written.saturating_sub(leave))
            .expect("give back part of the filler");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy file");
        }
    }
}

impl Cluster {
    /// Restarts the region's node with its data folder on a fresh tmpfs of `size_mib`, keeping
    /// `headroom_mib` free: its data moves there and its old path links to it (so every verb
    /// that reads the node's files still finds them).
    pub fn node_on_tmpfs(&mut self, region: &str, size_mib: u64, headroom_mib: u64) -> Tmpfs {
        self.kill_node(region);
        let data = self.node_data(region);
        let disk = Tmpfs::mount(&self.dir.path().join(format!("disk-{region}")), size_mib);
        let moved = disk.root.join("node");
        copy_dir(&data, &moved);
        std::fs::remove_dir_all(&data).expect("remove the old data folder");
        std::os::unix::fs::symlink(&moved, &data).expect("link the data folder");
        let config = self.node_config(region);
        let text = std::fs::read_to_string(&config).expect("node config");
        std::fs::write(
            &config,
            format!("disk_headroom_mib = {headroom_mib}\n{text}"),
        )
        .expect("write node config");
        self.start_node(region);
        self.wait_nodes_healthy(self.nodes.len());
        disk
    }
}
