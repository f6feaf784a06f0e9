//! The org users' search page in a real browser: Debian's headless Chromium, driven by
//! Playwright (`tests/browser/search.cjs`), against real `hemvist` processes. The user signs in,
//! types a name letter by letter and watches the list narrow; screenshots (desktop and phone)
//! are kept in `tests/artifacts/`.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and playwright-core in `.deps/`: `scripts/setup`
//! installs both (`scripts/test` runs it). Without them this test fails, saying so.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use support::browser;
use support::cluster::{Cluster, EU_NORTH, US_EAST};
use support::session::sign_in;

const ORG: &str = "nordlys";
const EMAIL: &str = "ada@nordlys.example";
const PASSWORD: &str = "correct horse battery";
/// What the browser types, one key at a time.
const TYPED: &str = "Andr";
/// The script's whole run, browser start included.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// (name, company, city): several names share prefixes ("An", "And", "Andr"), some only after
/// folding (Åsa, Åberg); no company or city has a word starting with "and".
const CONTACTS: &[(&str, &str, &str)] = &[
    ("Anna Andersson", "Fika Rosteri", "Göteborg"),
    ("Anders Berg", "Berg & Son Bygg", "Stockholm"),
    ("Annika Holm", "Holm Design", "Uppsala"),
    ("Andreas Lind", "Lind Logistik", "Malmö"),
    ("Åsa Öberg", "Nordsken Media", "Örebro"),
    ("Andrea Sjöberg", "Sjöberg Juridik", "Lund"),
    ("Sandra Andrén", "Kaffekompaniet", "Västerås"),
    ("Alva Ek", "Ek & Gran", "Umeå"),
    ("Axel Nyström", "Nyström El", "Kiruna"),
    ("Anton Wikström", "Wikström Trä", "Luleå"),
    ("Agnes Dahl", "Dahl Bageri", "Visby"),
    ("Annelie Strand", "Strand Hotell", "Ystad"),
    ("Britta Nilsson", "Nilsson Måleri", "Stockholm"),
    ("Bertil Åberg", "Åberg Fastigheter", "Malmö"),
    ("Cecilia Ström", "Ström Konsult", "Göteborg"),
    ("David Holmgren", "Holmgren IT", "Uppsala"),
    ("Elin Persson", "Persson Revision", "Linköping"),
    ("Erik Johansson", "Johansson Transport", "Jönköping"),
    ("Fredrik Larsson", "Larsson Bil", "Borås"),
    ("Gustav Karlsson", "Karlsson Snickeri", "Sundsvall"),
    ("Hanna Olsson", "Olsson Blommor", "Norrköping"),
    ("Ida Svensson", "Svensson Data", "Gävle"),
    ("Johan Eriksson", "Eriksson Verkstad", "Halmstad"),
    ("Karin Gustafsson", "Gustafsson Tryck", "Karlstad"),
    ("Lars Pettersson", "Pettersson Fisk", "Helsingborg"),
    ("Maria Jonsson", "Jonsson Optik", "Växjö"),
    ("Nils Lindberg", "Lindberg Musik", "Östersund"),
    ("Oskar Magnusson", "Magnusson Golv", "Falun"),
    ("Petra Lindqvist", "Lindqvist Redovisning", "Kalmar"),
    ("Sara Axelsson", "Axelsson Städ", "Trollhättan"),
    ("Tove Berglund", "Berglund Keramik", "Skellefteå"),
    ("Ulf Hedlund", "Hedlund Måleri", "Eskilstuna"),
    ("Viktor Sandberg", "Sandberg Säkerhet", "Södertälje"),
    ("Wilma Forsberg", "Forsberg Kaffe", "Nyköping"),
    ("Yusuf Demir", "Demir Livs", "Botkyrka"),
    ("Zofia Nowak", "Nowak Städ", "Solna"),
];

/// Lower-cased words with the diacritics of these contacts removed, as the search folds them.
fn folded_words(s: &str) -> Vec<String> {
    let folded: String = s
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'å' | 'ä' => 'a',
            'ö' => 'o',
            'é' => 'e',
            c => c,
        })
        .collect();
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// For every prefix of what is typed ("A", "An", ...), the names the search must find: those
/// of contacts with a word (of name, company or city) starting with it.
fn expected() -> Value {
    let mut out = Map::new();
    for end in 1..=TYPED.len() {
        let prefix = TYPED[..end].to_lowercase();
        let names: Vec<&str> = CONTACTS
            .iter()
            .filter(|(name, company, city)| {
                [name, company, city]
                    .iter()
                    .flat_map(|f| folded_words(f))
                    .any(|w| w.starts_with(&prefix))
            })
            .map(|(name, _, _)| *name)
            .collect();
        out.insert(TYPED[..end].to_string(), json!(names));
    }
    Value::Object(out)
}

fn repo() -> &'static Path {
    browser::repo()
}

/// Runs the Playwright script to its end (or kills it after `SCRIPT_TIMEOUT`):
/// (exited 0, stdout, stderr).
fn run_script(envs: &[(&str, String)]) -> (bool, String, String) {
    let script = repo().join("tests/browser/search.cjs");
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
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
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
            "\n[browser.rs] killed: the script ran longer than {SCRIPT_TIMEOUT:?}"
        ));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

#[test]
fn typing_a_name_narrows_the_results_in_a_real_browser() {
    let (chromium, node_modules) = browser::prerequisites();

    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    c.create_org_ready(ORG, json!({"region": "eu-north"}));
    c.add_user(ORG, EMAIL, PASSWORD);
    let base = c.node_url("eu-north");
    let u = sign_in(&base, ORG, EMAIL, PASSWORD).expect("sign in");
    for (name, company, city) in CONTACTS {
        let (status, _, body) = u.post(
            "/contacts",
            &[("name", name), ("company", company), ("city", city)],
            None,
        );
        assert_eq!(status, 303, "add {name}: {body}");
    }
    let (status, all) = u.json("/");
    assert_eq!(status, 200);
    assert_eq!(all["total"], CONTACTS.len(), "{all}");

    let artifacts = std::env::var_os("HEMVIST_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/artifacts"));
    std::fs::create_dir_all(&artifacts).expect("artifact directory");
    for stale in ["search.png", "search-phone.png", "search-failure.png"] {
        let _ = std::fs::remove_file(artifacts.join(stale));
    }
    let started = Instant::now();
    let (ok, stdout, stderr) = run_script(&[
        ("NODE_PATH", node_modules.display().to_string()),
        ("CHROMIUM", chromium.display().to_string()),
        ("HEMVIST_BASE", base.clone()),
        ("HEMVIST_ORG", ORG.to_string()),
        ("HEMVIST_EMAIL", EMAIL.to_string()),
        ("HEMVIST_PASSWORD", PASSWORD.to_string()),
        ("HEMVIST_TYPE", TYPED.to_string()),
        ("HEMVIST_EXPECT", expected().to_string()),
        ("HEMVIST_ARTIFACTS", artifacts.display().to_string()),
    ]);
    assert!(
        ok,
        "the browser script failed (after {:?}; screenshots, if any, in {}):\n\
         ---- stdout ----\n{stdout}\n---- stderr ----\n{stderr}",
        started.elapsed(),
        artifacts.display()
    );
    print!("{stdout}");
    for shot in ["search.png", "search-phone.png"] {
        let path = artifacts.join(shot);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {} is missing", path.display());
    }
}
