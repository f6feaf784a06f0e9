//! The layering, checked from the imports alone (adapters → domain → storage, each module knowing
//! only what is below it). Reads the crates' sources as text: every `crate::…` and `super::…`
//! path a file names is an edge from that file's module to the module the path reaches.
//!
//! What it keeps true:
//! - in the node, only the wiring (`lib.rs`) and the adapters (`web/`, `control_link.rs`) see
//!   `Node`;
//! - in the control plane, the domain and the store never name tonic, axum, the generated `pb`
//!   module or an adapter; the store names no domain module;
//! - in every crate, no two modules import each other, directly or round a longer loop (a
//!   module and its own submodules excepted: a parent declares its children).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One source file: its module path (`["backup", "replicator"]`) and its text without comments.
struct Source {
    module: Vec<String>,
    file: PathBuf,
    code: String,
}

fn sources(krate: &str) -> Vec<Source> {
    let src = Path::new(ROOT).join(krate).join("src");
    let mut out = Vec::new();
    walk(&src, &src, &mut out);
    assert!(!out.is_empty(), "no sources under {}", src.display());
    out
}

fn walk(src: &Path, dir: &Path, out: &mut Vec<Source>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(src, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src).unwrap();
            let mut module: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.push(Source {
                module,
                file: path.strip_prefix(ROOT).unwrap().to_path_buf(),
                code: strip_comments(&text),
            });
        }
    }
}

/// The text with `//` comments and test modules removed (tests may reach across layers to set
/// a scene; the layering is about what the running code depends on).
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start() == "#[cfg(test)]" {
            break;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every path the code names that starts with `crate::` or `super::`, resolved to a module
/// path, with `use` groups (`crate::a::{b, c::d}`) expanded.
fn named_paths(s: &Source) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code = &s.code;
    for start in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(i) = code[at..].find(start) {
            let i = at + i;
            at = i + start.len();
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let base: Vec<String> = if start == "crate::" {
                Vec::new()
            } else {
                let mut m = s.module.clone();
                m.pop();
                m
            };
            expand(&code[at..], base, &mut out);
        }
    }
    out
}

/// Reads one path (or a brace group of them) at the start of `rest`, below `base`.
fn expand(rest: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = base;
    let mut chars = rest.char_indices().peekable();
    let mut seg = String::new();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            seg.push(c);
        } else if c == ':' && chars.peek().map(|p| p.1) == Some(':') {
            chars.next();
            if seg == "super" {
                path.pop();
            } else if seg != "self" {
                path.push(std::mem::take(&mut seg));
            }
            seg.clear();
        } else if c == '{' && seg.is_empty() {
            let group = &rest[i + 1..];
            let end = matching_brace(group);
            for part in split_top(&group[..end]) {
                expand(part.trim(), path.clone(), out);
            }
            return;
        } else {
            break;
        }
    }
    if !seg.is_empty() && seg != "self" {
        path.push(seg);
    }
    out.push(path);
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut from) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[from..]);
    parts
}

/// The longest known module a named path lies in (a path to an item lies in its module).
fn module_of(path: &[String], modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// Which module names which, between siblings: a file in `a::x` naming `b::y` is an edge from
/// `a` to `b` (from the children of the two paths' common ancestor). A module naming its own
/// ancestors or descendants is left out.
fn graph(sources: &[Source]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for s in sources {
        for p in named_paths(s) {
            let to = module_of(&p, &modules);
            if to.starts_with(&s.module) || s.module.starts_with(&to) {
                continue;
            }
            let k = s.module.iter().zip(&to).take_while(|(a, b)| a == b).count();
            g.entry(s.module[..=k].to_vec())
                .or_default()
                .insert(to[..=k].to_vec());
            g.entry(to[..=k].to_vec()).or_default();
        }
    }
    g
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Every loop in the module graph, as the modules on it.
fn cycles(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    // Tarjan's strongly connected components; a component of more than one module is a loop.
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a [String], usize>,
        low: BTreeMap<&'a [String], usize>,
        stack: Vec<&'a [String]>,
        on: BTreeSet<&'a [String]>,
        found: Vec<String>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a [String]) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w: &'a [String] = w;
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(name(w));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.found.push(comp.join(" ⇄ "));
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_slice()) {
            visit(&mut t, v);
        }
    }
    t.found
}

#[test]
fn no_two_modules_import_each_other() {
    let mut loops = Vec::new();
    for krate in ["proto", "control", "node"] {
        for c in cycles(&graph(&sources(krate))) {
            loops.push(format!("{krate}: {c}"));
        }
    }
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn only_the_wiring_and_the_adapters_see_the_node() {
    let srcs = sources("node");
    let mut offenders = Vec::new();
    for s in &srcs {
        let allowed = s.module.is_empty()
            || s.module
                .first()
                .is_some_and(|m| m == "web" || m == "control_link");
        if allowed {
            continue;
        }
        if named_paths(s).iter().any(|p| p == &["Node".to_string()]) {
            offenders.push(s.file.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "these see the node's wiring (`crate::Node`) though they are below the adapters: {offenders:?}"
    );
}

/// The control plane's adapters: the only modules that may speak the wire (tonic, axum, `pb`).
const CONTROL_ADAPTERS: &[&str] = &["admin_api", "dashboard", "node_api", "hub", "front"];
/// The control plane's store, which knows nothing above it.
const CONTROL_STORE: &str = "store";

#[test]
fn the_control_planes_domain_and_store_know_no_transport() {
    let srcs = sources("control");
    let top: BTreeSet<String> = srcs
        .iter()
        .filter_map(|s| s.module.first().cloned())
        .collect();
    assert!(
        top.contains(CONTROL_STORE),
        "the control plane's store lives in {CONTROL_STORE}/"
    );
    let mut offenders = Vec::new();
    for s in &srcs {
        let Some(first) = s.module.first() else {
            continue; // lib.rs wires everything
        };
        if CONTROL_ADAPTERS.contains(&first.as_str()) || first == "config" {
            continue;
        }
        let words = ["tonic", "axum", "pb::", "hemvist_proto::pb"];
        for w in words {
            let hit = s.code.match_indices(w).any(|(i, _)| {
                !s.code[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if hit {
                offenders.push(format!("{} names {w}", s.file.display()));
            }
        }
        for p in named_paths(s) {
            if p.first()
                .is_some_and(|m| CONTROL_ADAPTERS.contains(&m.as_str()))
            {
                offenders.push(format!(
                    "{} imports the adapter {}",
                    s.file.display(),
                    name(&p)
                ));
            }
            if first == CONTROL_STORE
                && p.first()
                    .is_some_and(|m| m != CONTROL_STORE && m != "clock" && top.contains(m))
            {
                offenders.push(format!("{} (store) imports {}", s.file.display(), name(&p)));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

#[test]
fn the_checker_sees_what_it_checks() {
    // A loop the checker must find, and paths it must read, so the tests above cannot pass by
    // reading nothing.
    let a = Source {
        module: vec!["a".into()],
        file: "a.rs".into(),
        code: "use crate::b::{self, Thing};\nuse super::c::D;".into(),
    };
    let b = Source {
        module: vec!["b".into(), "inner".into()],
        file: "b/inner.rs".into(),
        code: "fn f() { crate::a::g() }".into(),
    };
    let c = Source {
        module: vec!["c".into()],
        file: "c.rs".into(),
        code: String::new(),
    };
    let bm = Source {
        module: vec!["b".into()],
        file: "b/mod.rs".into(),
        code: "mod inner;".into(),
    };
    assert_eq!(
        named_paths(&a),
        vec![
            vec!["b".to_string()],
            vec!["b".to_string(), "Thing".to_string()],
            vec!["c".to_string(), "D".to_string()]
        ]
    );
    let g = graph(&[a, b, c, bm]);
    assert_eq!(cycles(&g), vec!["a ⇄ b".to_string()]);
    assert!(g[&vec!["a".to_string()]].contains(&vec!["c".to_string()]));
}
