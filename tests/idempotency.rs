//! Idempotent writes, end to end with real processes: a sync org whose store is down answers a
//! form post 503 although it committed it; the same post again (same key) once the store is
//! back is told the first answer, and the org has one such contact. Scripts get the same from
//! `Idempotency-Key`; another key writes again, the same key with another body is 422; keys
//! expire after the node's `idempotency_ttl_secs`, and the table of keys stays bounded.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::{Cluster, EU_NORTH};
use support::idempotent::{form_key_in, hidden_fields_in};
use support::s3::S3;
use support::session::{sign_in, UserSession};

const PASSWORD: &str = "correct horse battery";

fn org_with_user(c: &Cluster, org: &str, extra: serde_json::Value) -> UserSession {
    let mut body = json!({"region": "eu-north"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    c.create_org_ready(org, body);
    let email = format!("ada@{org}.example");
    c.add_user(org, &email, PASSWORD);
    sign_in(&c.node_url("eu-north"), org, &email, PASSWORD).expect("sign in")
}

#[test]
fn a_retried_form_post_with_the_same_key_creates_one_contact() {
    let s3 = S3::start();
    let c = Cluster::start_with_node_config(&[EU_NORTH], &s3.node_backup_toml(200));
    let u = org_with_user(&c, "ledger", json!({"durability": "sync"}));

    // Every render of a write form carries a key of its own.
    let (status, _, page) = u.get("/contacts/new");
    assert_eq!(status, 200);
    let key = form_key_in(&page).expect("the new-contact form has an idempotency key");
    let (_, _, again) = u.get("/contacts/new");
    assert_ne!(
        form_key_in(&again),
        Some(key.clone()),
        "a fresh key per form"
    );

    // The store goes away: the write commits on the node but cannot be confirmed.
    s3.faults.down.store(true, Ordering::SeqCst);
    let fields = [
        ("name", "Greta Lindqvist"),
        ("city", "Falun"),
        ("idempotency_key", key.as_str()),
    ];
    let first = u.post_with("/contacts", &fields, &[]);
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(c.contacts_named("eu-north", "ledger", "Greta Lindqvist"), 1);
    // The page the browser shows posts the very same fields again, key and all.
    let retry: Vec<(String, String)> = hidden_fields_in(&first.body);
    assert!(
        retry.contains(&("idempotency_key".into(), key.clone())),
        "the 503 page's form carries the key: {retry:?}"
    );

    // Tried again while the store is still away: still not confirmed (a sync write is
    // acknowledged only once it is in the store), and still nothing written twice.
    let early = u.post_with("/contacts", &fields, &[]);
    assert_eq!(early.status, 503, "{}", early.body);
    assert_eq!(c.contacts_named("eu-north", "ledger", "Greta Lindqvist"), 1);

    // The store is back; the user presses "Try again".
    s3.faults.down.store(false, Ordering::SeqCst);
    let retry: Vec<(&str, &str)> = retry
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let second = u.post_with("/contacts", &retry, &[]);
    assert_eq!(second.status, 303, "{}", second.body);
    assert!(second.replayed, "told it is the first answer again");
    let location = second.location.expect("Location");
    assert!(
        location.starts_with("/o/ledger/contacts/") && location.ends_with("?saved=1"),
        "{location}"
    );
    assert_eq!(
        c.contacts_named("eu-north", "ledger", "Greta Lindqvist"),
        1,
        "the retry wrote nothing"
    );
    let (status, _, shown) = u.get(location.trim_start_matches("/o/ledger"));
    assert_eq!(status, 200);
    assert!(
        shown.contains("Greta Lindqvist"),
        "the answer is the contact"
    );

    // And the same once more, as the browser's reload would: still one contact.
    let third = u.post_with("/contacts", &fields, &[]);
    assert_eq!((third.status, third.replayed), (303, true));
    assert_eq!(third.location.as_deref(), Some(location.as_str()));
    assert_eq!(c.contacts_named("eu-north", "ledger", "Greta Lindqvist"), 1);
}

#[test]
fn json_writes_with_an_idempotency_key_are_answered_once() {
    let c = Cluster::start(&[EU_NORTH]);
    let u = org_with_user(&c, "kontor", json!({}));
    let ada = [("name", "Ada Berg"), ("company", "Kontor AB")];

    let first = u.post_json_keyed("/contacts", "8e03978e-40d5-43e8-bc93-6894a57f9324", &ada);
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(!first.replayed);
    let id = first.json()["id"].as_i64().expect("id");
    let again = u.post_json_keyed("/contacts", "8e03978e-40d5-43e8-bc93-6894a57f9324", &ada);
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.json(), first.json(), "the first answer again");
    assert_eq!(c.contacts_named("eu-north", "kontor", "Ada Berg"), 1);

    // Another key is another write.
    let other = u.post_json_keyed("/contacts", "second-key", &ada);
    assert_eq!((other.status, other.replayed), (201, false));
    assert_ne!(other.json()["id"].as_i64(), Some(id));
    assert_eq!(c.contacts_named("eu-north", "kontor", "Ada Berg"), 2);

    // The same key with another body, or on another route, is refused and writes nothing.
    let reused = u.post_json_keyed(
        "/contacts",
        "8e03978e-40d5-43e8-bc93-6894a57f9324",
        &[("name", "Bea Berg")],
    );
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(reused.json()["error"]["kind"], "idempotency_key_reused");
    assert_eq!(c.contacts_named("eu-north", "kontor", "Bea Berg"), 0);
    let path = format!("/contacts/{id}");
    let elsewhere = u.post_json_keyed(&path, "8e03978e-40d5-43e8-bc93-6894a57f9324", &ada);
    assert_eq!(elsewhere.status, 422, "{}", elsewhere.body);

    // Edits too: the retry is the first answer, even after someone else changed the contact.
    let edit = [("name", "Ada Berg"), ("city", "Visby")];
    let saved = u.post_json_keyed(&path, "edit-1", &edit);
    assert_eq!((saved.status, saved.json()["id"].as_i64()), (200, Some(id)));
    let theirs = u.post_json_keyed(&path, "edit-2", &[("name", "Ada Berg"), ("city", "Kiruna")]);
    assert_eq!(theirs.status, 200);
    let retried = u.post_json_keyed(&path, "edit-1", &edit);
    assert_eq!((retried.status, retried.replayed), (200, true));
    let (_, shown) = u.json(&path);
    assert_eq!(
        shown["city"], "Kiruna",
        "the retry did not write over the later edit"
    );

    // The key as the IETF draft quotes it is the same key; a key that is no key is 400.
    let quoted = u.post_json_keyed("/contacts", "\"second-key\"", &ada);
    assert_eq!((quoted.status, quoted.replayed), (201, true));
    for bad in ["has space", "a<b", &"k".repeat(300)] {
        let p = u.post_json_keyed("/contacts", bad, &ada);
        assert_eq!(p.status, 400, "{bad}: {}", p.body);
        assert!(
            p.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("idempotency key")),
            "{}",
            p.body
        );
    }
    let in_form = u.post_with(
        "/contacts",
        &[("name", "Ada Berg"), ("idempotency_key", "näst")],
        &[("accept", "application/json")],
    );
    assert_eq!(in_form.status, 400, "{}", in_form.body);
    let two = u.post_with(
        "/contacts",
        &[("name", "Ada Berg"), ("idempotency_key", "one")],
        &[("accept", "application/json"), ("idempotency-key", "two")],
    );
    assert_eq!(two.status, 400, "{}", two.body);
    assert_eq!(c.contacts_named("eu-north", "kontor", "Ada Berg"), 2);

    // The same post sent many times at once: one write, and every answer is its answer.
    let u = std::sync::Arc::new(u);
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let u = u.clone();
            std::thread::spawn(move || {
                u.post_json_keyed("/contacts", "raced", &[("name", "Cai Racer")])
                    .json()
            })
        })
        .collect();
    let answers: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(answers[0]["id"].is_i64(), "{answers:?}");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(c.contacts_named("eu-north", "kontor", "Cai Racer"), 1);

    // Without a key a write still works, and is not deduplicated.
    for _ in 0..2 {
        let p = u.post_with("/contacts", &ada, &[("accept", "application/json")]);
        assert_eq!(p.status, 201, "{}", p.body);
    }
    assert_eq!(c.contacts_named("eu-north", "kontor", "Ada Berg"), 4);
}

#[test]
fn keys_expire_after_their_time_and_the_table_stays_bounded() {
    let c = Cluster::start_with_node_config(&[EU_NORTH], "idempotency_ttl_secs = 2\n");
    let u = org_with_user(&c, "arkiv", json!({}));
    for i in 0..20 {
        let name = format!("Old {i:02}");
        let p = u.post_json_keyed("/contacts", &format!("old-{i}"), &[("name", &name)]);
        assert_eq!(p.status, 201, "{}", p.body);
    }
    let last = Instant::now();
    assert_eq!(c.idempotency_records("eu-north", "arkiv"), 20);

    // Past its time (wall-clock time is what a key lives, so the clock is waited for) a key is
    // forgotten: the same post is a new write, and the expired records are gone.
    std::thread::sleep(Duration::from_millis(2_300).saturating_sub(last.elapsed()));
    let later = u.post_json_keyed("/contacts", "old-0", &[("name", "Old 00")]);
    assert_eq!(
        (later.status, later.replayed),
        (201, false),
        "{}",
        later.body
    );
    assert_eq!(c.contacts_named("eu-north", "arkiv", "Old 00"), 2);
    assert_eq!(
        c.idempotency_records("eu-north", "arkiv"),
        1,
        "only the live key is kept"
    );
}
