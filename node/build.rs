//! Embeds the tenant schema: every `migrations/NNNN_name.sql`, in order, as a static list.

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<(u32, String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("read migrations/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let (num, name) = stem
                .split_once('_')
                .unwrap_or_else(|| panic!("migration {stem} must be named NNNN_name.sql"));
            let version: u32 = num
                .parse()
                .unwrap_or_else(|_| panic!("migration {stem} must start with a number"));
            (version, name.to_string(), p.canonicalize().unwrap())
        })
        .collect();
    files.sort();
    for (i, (v, name, _)) in files.iter().enumerate() {
        assert_eq!(
            *v as usize,
            i + 1,
            "migration {v}_{name}: versions must be 1, 2, 3, ... without gaps"
        );
        println!("cargo:rerun-if-changed={}", files[i].2.display());
    }
    let mut out = String::from("pub static MIGRATIONS: &[Migration] = &[\n");
    for (v, name, path) in &files {
        writeln!(
            out,
            "    Migration {{ version: {v}, name: {name:?}, sql: include_str!({:?}) }},",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(dest, out).unwrap();
}
