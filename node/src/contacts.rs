//! The contact book: validation and writes. Every write goes through the node's
//! [`Writer`], so it is acknowledged only by the org's current owner under a live lease, and
//! once per idempotency key ([`crate::idempotency`]), recorded in the write's own transaction.

use std::collections::BTreeMap;

use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::idempotency::{self, Answer, Claim, Key, Once};
use crate::writes::Writer;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContactInput {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub company: String,
    #[serde(default)]
    pub city: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Contact {
    pub id: i64,
    #[serde(flatten)]
    pub fields: ContactInput,
    pub updated_ms: i64,
}

/// Field → message, for the form.
pub type Problems = BTreeMap<&'static str, String>;

fn bad_chars(s: &str, multiline: bool) -> bool {
    s.chars().any(|c| {
        (c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    })
}

/// Trims and checks a contact; returns it cleaned, or every problem at once.
pub fn validate(input: &ContactInput) -> Result<ContactInput, Problems> {
    let mut p = Problems::new();
    let c = ContactInput {
        name: input.name.trim().to_string(),
        email: input.email.trim().to_string(),
        company: input.company.trim().to_string(),
        city: input.city.trim().to_string(),
        phone: input.phone.trim().to_string(),
        notes: input.notes.trim().to_string(),
    };
    let limits: [(&'static str, &str, usize, bool); 6] = [
        ("name", &c.name, 200, false),
        ("email", &c.email, 254, false),
        ("company", &c.company, 200, false),
        ("city", &c.city, 120, false),
        ("phone", &c.phone, 40, false),
        ("notes", &c.notes, 4000, true),
    ];
    for (field, value, max, multiline) in limits {
        if value.chars().count() > max {
            p.insert(field, format!("At most {max} characters."));
        } else if bad_chars(value, multiline) {
            p.insert(
                field,
                "Contains invisible control or direction characters.".into(),
            );
        }
    }
    if c.name.is_empty() {
        p.insert("name", "A name is required.".into());
    }
    if !c.email.is_empty() && !p.contains_key("email") {
        let valid = c.email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !c
                    .email
                    .chars()
                    .any(|ch| ch.is_whitespace() || matches!(ch, '<' | '>' | '"' | ','))
                && c.email.matches('@').count() == 1
        });
        if !valid {
            p.insert("email", "This does not look like an email address.".into());
        }
    }
    if !c.phone.is_empty()
        && !p.contains_key("phone")
        && !c
            .phone
            .chars()
            .all(|ch| ch.is_ascii_digit() || matches!(ch, ' ' | '+' | '-' | '(' | ')' | '.' | '/'))
    {
        p.insert("phone", "Use digits, spaces and + - ( ) . / only.".into());
    }
    if p.is_empty() {
        Ok(c)
    } else {
        Err(p)
    }
}

pub fn get(w: &Writer, org: &OrgId, id: i64) -> Result<Contact, HemvistError> {
    w.read(org, |c| {
            c.prepare_cached(
                "SELECT id, name, email, company, city, phone, notes, updated_ms FROM contacts WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok(Contact {
                    id: r.get(0)?,
                    fields: ContactInput {
                        name: r.get(1)?,
                        email: r.get(2)?,
                        company: r.get(3)?,
                        city: r.get(4)?,
                        phone: r.get(5)?,
                        notes: r.get(6)?,
                    },
                    updated_ms: r.get(7)?,
                })
            })
            .optional()
        })?
        .ok_or_else(|| HemvistError::not_found(format!("no contact {id}")))
}

/// The answer to a contact created: a retry under the same idempotency key is told the same.
fn created(id: i64) -> Answer {
    Answer {
        status: 201,
        body: serde_json::json!({ "id": id }).to_string(),
        location: format!("contacts/{id}?saved=1"),
    }
}

fn saved(id: i64) -> Answer {
    Answer {
        status: 200,
        body: serde_json::json!({ "id": id }).to_string(),
        location: format!("contacts/{id}?saved=1"),
    }
}

/// What a contact write is, for its idempotency key: the route, who asks and every field
/// written (as cleaned), so a retry matches and anything else under the same key does not.
pub fn claim(key: &Key, ttl_ms: i64, user_id: i64, route: &str, c: &ContactInput) -> Claim {
    let user = user_id.to_string();
    Claim::new(
        key,
        &[
            route, &user, &c.name, &c.email, &c.company, &c.city, &c.phone, &c.notes,
        ],
        ttl_ms,
    )
}

/// Adds a contact, once per idempotency key: the answer, first or replayed.
pub fn create(
    w: &Writer,
    org: &OrgId,
    c: &ContactInput,
    claim: Option<&Claim>,
) -> Result<Once<Answer>, HemvistError> {
    let c = c.clone();
    w.write(org, move |tx| {
        let now = now_ms();
        idempotency::once(
            tx,
            claim,
            now,
            |tx| {
                tx.execute(
                    "INSERT INTO contacts
                       (name, email, company, city, phone, notes, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                    params![c.name, c.email, c.company, c.city, c.phone, c.notes, now],
                )?;
                Ok(created(tx.last_insert_rowid()))
            },
            |a| Some(a.clone()),
        )
    })
}

/// Changes a contact, once per idempotency key. A contact that is not there is `NotFound`, and
/// leaves no record of the key.
pub fn update(
    w: &Writer,
    org: &OrgId,
    id: i64,
    c: &ContactInput,
    claim: Option<&Claim>,
) -> Result<Once<Answer>, HemvistError> {
    let c = c.clone();
    let out = w.write(org, move |tx| {
        let now = now_ms();
        idempotency::once(
            tx,
            claim,
            now,
            |tx| {
                let changed = tx.execute(
                    "UPDATE contacts SET name = ?2, email = ?3, company = ?4, city = ?5, phone = ?6,
                       notes = ?7, updated_ms = ?8 WHERE id = ?1",
                    params![id, c.name, c.email, c.company, c.city, c.phone, c.notes, now],
                )?;
                Ok((changed > 0).then(|| saved(id)))
            },
            Option::clone,
        )
    })?;
    match out {
        Once::Written(None) => Err(HemvistError::new(
            ErrorKind::NotFound,
            format!("no contact {id}"),
        )),
        Once::Written(Some(a)) => Ok(Once::Written(a)),
        Once::Replayed(a) => Ok(Once::Replayed(a)),
        Once::Reused => Ok(Once::Reused),
    }
}
