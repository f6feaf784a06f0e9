//! End-to-end scenarios of the org users' app, against real `hemvist` processes: sign-in,
//! active search, contacts, and everything hostile users can throw at it.

mod support;

use serde_json::{json, Value};
use support::cluster::{raw_status, Cluster, EU_NORTH, US_EAST};
use support::session::{sign_in, UserSession};

const PASSWORD: &str = "correct horse battery";

fn org_with_user(c: &Cluster, org: &str, region: &str) -> UserSession {
    c.create_org_ready(org, json!({"region": region}));
    let email = format!("ada@{org}.example");
    c.add_user(org, &email, PASSWORD);
    sign_in(&c.node_url(region), org, &email, PASSWORD).expect("sign in")
}

fn add_contact(u: &UserSession, fields: &[(&str, &str)]) -> i64 {
    let (status, location, body) = u.post("/contacts", fields, None);
    assert_eq!(status, 303, "{body}");
    let location = location.expect("redirect to the contact");
    location
        .split("/contacts/")
        .nth(1)
        .and_then(|s| s.split('?').next())
        .and_then(|s| s.parse().ok())
        .expect("contact id")
}

fn names(found: &Value) -> Vec<String> {
    found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sign_in_search_add_edit_and_sign_out() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let u = org_with_user(&c, "fika", "eu-north");
    let eu = c.node_url("eu-north");
    assert_eq!(
        sign_in(&eu, "fika", "ada@fika.example", "wrong password").err(),
        Some(401)
    );
    assert_eq!(
        sign_in(&eu, "fika", "nobody@fika.example", PASSWORD).err(),
        Some(401)
    );

    // An empty book, then a contact with diacritics: found both ways, at once.
    let (status, empty) = u.json("/");
    assert_eq!(status, 200);
    assert_eq!(empty["total"], 0);
    let id = add_contact(
        &u,
        &[
            ("name", "Åsa Öberg"),
            ("email", "asa@fika.se"),
            ("company", "Fika Rosteri AB"),
            ("city", "Göteborg"),
        ],
    );
    add_contact(&u, &[("name", "Bertil Åberg"), ("city", "Malmö")]);
    for q in [
        "asa",
        "Åsa",
        "%C3%85sa",
        "obe",
        "ÖBERG",
        "gote",
        "rost",
        "asa%20gote",
    ] {
        let (status, found) = u.json(&format!("/?q={q}"));
        assert_eq!(status, 200, "{q}");
        assert_eq!(names(&found), ["Åsa Öberg"], "{q}: {found}");
    }
    // The org's in-memory index was built by a search; asking again builds nothing, and a
    // write makes the next search catch up from the change log, not rebuild (checked below).
    let builds = c.metric(&eu, "hemvist_search_index_builds_total");
    assert!(builds >= 1, "the first search builds the index");
    assert_eq!(names(&u.json("/?q=asa").1), ["Åsa Öberg"]);
    assert_eq!(c.metric(&eu, "hemvist_search_index_builds_total"), builds);
    let (_, found) = u.json("/?q=aberg");
    assert_eq!(names(&found), ["Bertil Åberg"]);
    let (_, recent) = u.json("/");
    assert_eq!(
        names(&recent),
        ["Bertil Åberg", "Åsa Öberg"],
        "newest first"
    );

    // The fragment htmx swaps in highlights what matched, and the page itself is bookmarkable.
    let (status, _, fragment) =
        u.get_with(&format!("{eu}/o/fika/?q=asa"), &[("hx-request", "true")]);
    assert_eq!(status, 200);
    assert!(!fragment.contains("<html"), "a fragment, not a page");
    assert!(fragment.contains("<mark>Åsa</mark>"), "{fragment}");
    assert!(fragment.contains("1 contact match"), "{fragment}");
    let (status, _, page) = u.get("/?q=asa");
    assert_eq!(status, 200);
    assert!(
        page.contains("<html")
            && page.contains("value=\"asa\"")
            && page.contains("<mark>Åsa</mark>")
    );
    assert!(page.contains("/static/htmx-2.0.11.min.js"));
    let (status, _, js) = u.get_with(&format!("{eu}/static/htmx-2.0.11.min.js"), &[]);
    assert!(status == 200 && js.len() > 40_000);

    // Edit: the change is searchable at once; the old city is not.
    let (status, _, form) = u.get(&format!("/contacts/{id}"));
    assert_eq!(status, 200);
    assert!(form.contains("value=\"Åsa Öberg\""));
    let (status, location, _) = u.post(
        &format!("/contacts/{id}"),
        &[
            ("name", "Åsa Öberg"),
            ("email", "asa@fika.se"),
            ("company", "Fika Rosteri AB"),
            ("city", "Uppsala"),
        ],
        None,
    );
    assert_eq!(
        (status, location),
        (303, Some(format!("/o/fika/contacts/{id}?saved=1")))
    );
    let catch_ups = c.metric(&eu, "hemvist_search_index_catch_ups_total");
    assert_eq!(names(&u.json("/?q=uppsala").1), ["Åsa Öberg"]);
    assert_eq!(u.json("/?q=goteborg").1["total"], 0);
    assert!(c.metric(&eu, "hemvist_search_index_catch_ups_total") > catch_ups);
    assert_eq!(c.metric(&eu, "hemvist_search_index_builds_total"), builds);

    // Server-side validation, with every problem named; nothing is stored.
    let (status, _, page) = u.post(
        "/contacts",
        &[
            ("name", " "),
            ("email", "not-an-email"),
            ("phone", "call me"),
        ],
        None,
    );
    assert_eq!(status, 422);
    assert!(
        page.contains("A name is required.")
            && page.contains("does not look like an email")
            && page.contains("digits")
    );
    let (status, _, _) = u.post(&format!("/contacts/{id}"), &[("name", "")], None);
    assert_eq!(status, 422);
    assert_eq!(u.get("/contacts/999999").0, 404);
    assert_eq!(u.get("/contacts/abc").0, 400);
    assert_eq!(u.json("/").1["total"], 2);

    // Sign out: the session is gone for good, even if someone kept the cookie.
    let (status, location, _) = u.post("/signout", &[], None);
    assert_eq!((status, location.as_deref()), (303, Some("/o/fika/signin")));
    let (status, location, _) = u.get("/");
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/o/fika/signin?next=/o/fika/"))
    );
    assert_eq!(u.json("/").0, 401);
}

#[test]
fn a_user_of_one_org_is_refused_everything_of_another_on_every_node() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let a = org_with_user(&c, "alpha", "eu-north");
    let same_node = org_with_user(&c, "gamma", "eu-north");
    let other_region = org_with_user(&c, "beta", "us-east");
    add_contact(&same_node, &[("name", "Gamma Secret")]);
    add_contact(&other_region, &[("name", "Beta Secret")]);

    for victim in ["gamma", "beta"] {
        for node in [c.node_url("eu-north"), c.node_url("us-east")] {
            let base = format!("{node}/o/{victim}");
            for (path, accept) in [
                ("/", "text/html"),
                ("/?q=secret", "application/json"),
                ("/?q=secret", "text/html"),
                ("/contacts/1", "application/json"),
                ("/contacts/new", "text/html"),
                ("/signin", "text/html"),
                ("/anything/else", "application/json"),
            ] {
                let (status, _, body) = a.get_with(&format!("{base}{path}"), &[("accept", accept)]);
                assert_eq!(status, 403, "{base}{path} as {accept}: {body}");
                assert!(!body.contains("Secret"));
            }
            for path in ["/contacts", "/contacts/1", "/signout", "/signin"] {
                let status = support::http()
                    .build()
                    .unwrap()
                    .post(format!("{base}{path}"))
                    .header("cookie", &a.cookie)
                    .form(&[("_csrf", a.csrf.as_str()), ("name", "Injected")])
                    .send()
                    .unwrap()
                    .status()
                    .as_u16();
                assert_eq!(status, 403, "POST {base}{path}");
            }
        }
    }
    assert!(same_node.json("/?q=injected").1["total"] == 0);
    assert!(other_region.json("/?q=injected").1["total"] == 0);
    assert!(c.metric(&c.node_url("us-east"), "hemvist_http_forbidden_total") >= 14);
}

#[test]
fn forms_without_the_right_csrf_token_are_refused() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let u = org_with_user(&c, "safe", "eu-north");
    let (status, _, _) = u.post("/contacts", &[("name", "Forged")], Some("0000"));
    assert_eq!(status, 403);
    let resp = support::http()
        .build()
        .unwrap()
        .post(format!("{}/o/safe/contacts", u.base))
        .header("cookie", &u.cookie)
        .form(&[("name", "Forged")])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403, "no token at all");
    let (status, _, _) = u.post("/signout", &[], Some("nope"));
    assert_eq!(status, 403);
    // The sign-in form needs its own double-submit token: a cross-site post cannot sign anyone in.
    let resp = support::http()
        .build()
        .unwrap()
        .post(format!("{}/o/safe/signin", u.base))
        .form(&[
            ("_csrf", "x"),
            ("email", "ada@safe.example"),
            ("password", PASSWORD),
        ])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(u.json("/?q=forged").1["total"], 0);
    assert!(c.metric(&u.base, "hemvist_csrf_refused_total") >= 4);
}

#[test]
fn what_users_type_is_shown_as_text() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let u = org_with_user(&c, "xss", "eu-north");
    let payloads = [
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "'; DROP TABLE contacts; --",
        "<b onmouseover=alert(1)>bold</b>",
    ];
    for p in payloads {
        let id = add_contact(&u, &[("name", p), ("company", p), ("notes", p)]);
        let (_, _, form) = u.get(&format!("/contacts/{id}"));
        assert!(
            !form.contains(p) || !p.contains('<') && !p.contains('"'),
            "raw payload in the form: {p}"
        );
    }
    for q in ["script", "img", "drop", "bold"] {
        let (_, _, page) = u.get(&format!("/?q={q}"));
        assert!(
            !page.contains("<script>alert")
                && !page.contains("<img src=x")
                && !page.contains("<b onmouseover"),
            "{q}"
        );
        let (_, _, fragment) = u.get_with(
            &format!("{}/o/xss/?q={q}", u.base),
            &[("hx-request", "true")],
        );
        assert!(
            !fragment.contains("<script>alert") && !fragment.contains("<img src"),
            "{q}"
        );
    }
    let (_, _, page) = u.get("/");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(
        u.json("/").1["total"],
        payloads.len(),
        "the table is still there"
    );
}

#[test]
fn hostile_searches_get_results_or_a_clear_4xx_and_never_another_orgs_data() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let u = org_with_user(&c, "mine", "eu-north");
    let other = org_with_user(&c, "theirs", "eu-north");
    add_contact(
        &other,
        &[("name", "Zebulon Quux"), ("email", "z@theirs.example")],
    );
    add_contact(
        &u,
        &[("name", "Anna Andersson"), ("email", "anna@mine.example")],
    );
    let long_words = "word ".repeat(2_000);
    let ten_kb = "a".repeat(10_000);
    let queries: Vec<String> = [
        "\"",
        "\"\"",
        "*",
        "a*",
        "(",
        ")",
        "NEAR(",
        "NEAR(a b, 2)",
        "-",
        "-anna",
        "^",
        "^anna",
        "email:",
        "email:anna",
        "name:zebulon",
        "{name}:x",
        "anna OR zebulon",
        "anna AND NOT x",
        "' OR 1=1 --",
        "'; DROP TABLE contacts; --",
        "\\",
        "%",
        "%25",
        "_",
        "a\u{202e}nna",
        "a\u{0301}nna",
        "\u{0000}",
        "a\u{0000}b",
        "zebulon",
        "quux",
        "theirs",
        "\u{feff}anna",
        "🦀",
        "ｚｅｂｕｌｏｎ",
        "\u{200b}",
        "      ",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long_words, ten_kb])
    .collect();
    for q in &queries {
        let encoded: String = q.bytes().map(|b| format!("%{b:02X}")).collect();
        for accept in ["application/json", "text/html"] {
            let (status, _, body) = u.get_with(
                &format!("{}/o/mine/?q={encoded}", u.base),
                &[("accept", accept)],
            );
            assert!(status == 200 || status == 400, "{q:?} → {status}: {body}");
            assert!(
                !body.contains("Zebulon") && !body.contains("theirs.example"),
                "{q:?} leaked another org"
            );
        }
    }
    // Raw bytes that are not UTF-8, and a page number that is not one.
    let node = u.base.trim_start_matches("http://").to_string();
    let cookie = format!("Cookie: {}\r\n", u.cookie);
    for path in [
        &b"/o/mine/?q=%ff%fe"[..],
        b"/o/mine/?q=\xff\xfe",
        b"/o/mine/?q=anna&page=-1",
        b"/o/mine/?q=anna&page=99999999999999999999999",
    ] {
        let status = raw_status(&node, "GET", path, &cookie, b"");
        assert!(
            (200..500).contains(&status),
            "{:?} → {status}",
            String::from_utf8_lossy(path)
        );
    }
    let (status, found) = u.json("/?q=a%2A%20OR%20zebulon");
    assert_eq!(status, 200);
    assert!(names(&found).iter().all(|n| n != "Zebulon Quux"));
    let (status, err) = u.json(&format!("/?q={}", "a".repeat(10_000)));
    assert_eq!(status, 400);
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too long"));
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let u = org_with_user(&c, "big", "eu-north");
    let huge = "x".repeat(100_000);
    let (status, _, _) = u.post("/contacts", &[("name", "Big"), ("notes", &huge)], None);
    assert_eq!(status, 413);
    let resp = support::http()
        .build()
        .unwrap()
        .post(format!("{}/o/big/signin", u.base))
        .header("cookie", "hv_signin=a")
        .form(&[("_csrf", "a"), ("email", "x@y.z"), ("password", &huge)])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(u.json("/").1["total"], 0);
}

#[test]
fn operators_add_users_from_the_cli() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let (ok, out, err) = c.cli(&[
        "orgs",
        "create",
        "clio",
        "--name",
        "Clio AB",
        "--region",
        "eu-north",
        "--admin-email",
        "first@clio.example",
        "--json",
    ]);
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let password = created["user"]["password"]
        .as_str()
        .expect("a generated password")
        .to_string();
    assert_eq!(created["user"]["state"], "done");
    sign_in(
        &c.node_url("eu-north"),
        "clio",
        "first@clio.example",
        &password,
    )
    .expect("first user signs in");

    let (ok, _, err) = c.cli(&[
        "users",
        "add",
        "clio",
        "--email",
        "second@clio.example",
        "--password",
        "second-password",
    ]);
    assert!(ok, "{err}");
    sign_in(
        &c.node_url("eu-north"),
        "clio",
        "second@clio.example",
        "second-password",
    )
    .expect("second user");
    // The same request again is the same user; a different password for that email is a conflict.
    let (ok, _, _) = c.cli(&[
        "users",
        "add",
        "clio",
        "--email",
        "second@clio.example",
        "--password",
        "second-password",
    ]);
    assert!(ok);
    let (ok, _, err) = c.cli(&[
        "users",
        "add",
        "clio",
        "--email",
        "second@clio.example",
        "--password",
        "another-password",
    ]);
    assert!(!ok && err.contains("conflict"), "{err}");
    let (ok, _, err) = c.cli(&["users", "add", "clio", "--email", "bad", "--password", "x"]);
    assert!(!ok && err.contains("invalid_argument"), "{err}");
    // Password hashes never leave the control plane through its API.
    let (_, shown) = c.admin("GET", "/orgs/clio", None);
    assert!(!shown.to_string().contains("argon2"), "{shown}");
}
