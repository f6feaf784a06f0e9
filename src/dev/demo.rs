//! Deterministic, realistic demo contacts for `hemvist dev`: the same seed always gives the same
//! contact book.

use hemvist_proto::{HemvistError, OrgId};

use hemvist_node::now_ms;
use hemvist_node::writes::Writer;

/// A small, fast, deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locale {
    Swedish,
    German,
    American,
}

struct Words {
    first: &'static [&'static str],
    last: &'static [&'static str],
    cities: &'static [&'static str],
    company_suffix: &'static [&'static str],
    phone: &'static str,
    domain: &'static str,
}

const SWEDISH: Words = Words {
    first: &[
        "Åsa", "Anna", "Björn", "Karin", "Lars", "Märta", "Öjvind", "Sven", "Ingrid", "Erik",
        "Maja", "Johan", "Linnéa", "Per", "Sofia", "Gustav", "Elsa", "Nils", "Astrid", "Olof",
        "Ebba", "Anders", "Frida", "Håkan", "Agnes", "Mikael", "Klara", "Göran", "Wilma", "Tomas",
    ],
    last: &[
        "Andersson",
        "Johansson",
        "Karlsson",
        "Nilsson",
        "Eriksson",
        "Larsson",
        "Olsson",
        "Persson",
        "Svensson",
        "Gustafsson",
        "Pettersson",
        "Jonsson",
        "Lindström",
        "Åberg",
        "Öberg",
        "Bergström",
        "Lundqvist",
        "Sjöberg",
        "Wallin",
        "Engström",
        "Hedlund",
        "Ekström",
    ],
    cities: &[
        "Stockholm",
        "Göteborg",
        "Malmö",
        "Uppsala",
        "Västerås",
        "Örebro",
        "Linköping",
        "Helsingborg",
        "Jönköping",
        "Norrköping",
        "Lund",
        "Umeå",
        "Gävle",
        "Borås",
        "Luleå",
    ],
    company_suffix: &["AB", "Handelsbolag", "Konsult AB", "Gruppen AB"],
    phone: "+46 70",
    domain: "se",
};

const GERMAN: Words = Words {
    first: &[
        "Jürgen", "Müller", "Anja", "Klaus", "Sabine", "Stefan", "Ute", "Thomas", "Birgit",
        "Andreas", "Katrin", "Michael", "Petra", "Jörg", "Monika", "Frank", "Heike", "Uwe",
        "Claudia", "Dieter", "Lena", "Felix", "Mia", "Lukas", "Sophie",
    ],
    last: &[
        "Müller",
        "Schmidt",
        "Schneider",
        "Fischer",
        "Weber",
        "Meyer",
        "Wagner",
        "Becker",
        "Schulz",
        "Hoffmann",
        "Schäfer",
        "Koch",
        "Bauer",
        "Richter",
        "Klein",
        "Wolf",
        "Schröder",
        "Neumann",
        "Schwarz",
        "Zimmermann",
        "Krüger",
        "Hartmann",
    ],
    cities: &[
        "Frankfurt",
        "Berlin",
        "München",
        "Hamburg",
        "Köln",
        "Stuttgart",
        "Düsseldorf",
        "Leipzig",
        "Dortmund",
        "Essen",
        "Bremen",
        "Dresden",
        "Hannover",
        "Nürnberg",
        "Mainz",
    ],
    company_suffix: &["GmbH", "AG", "KG", "GmbH & Co. KG"],
    phone: "+49 151",
    domain: "de",
};

const AMERICAN: Words = Words {
    first: &[
        "James",
        "Mary",
        "Robert",
        "Patricia",
        "John",
        "Jennifer",
        "Michael",
        "Linda",
        "David",
        "Elizabeth",
        "William",
        "Barbara",
        "Richard",
        "Susan",
        "Joseph",
        "Jessica",
        "Thomas",
        "Sarah",
        "Charles",
        "Karen",
        "José",
        "María",
        "Chloé",
        "Zoë",
        "Renée",
    ],
    last: &[
        "Smith",
        "Johnson",
        "Williams",
        "Brown",
        "Jones",
        "Garcia",
        "Miller",
        "Davis",
        "Rodriguez",
        "Martinez",
        "Hernandez",
        "Lopez",
        "Gonzalez",
        "Wilson",
        "Anderson",
        "Thomas",
        "Taylor",
        "Moore",
        "Jackson",
        "Martin",
        "Lee",
        "O'Brien",
    ],
    cities: &[
        "Richmond",
        "Arlington",
        "Alexandria",
        "Norfolk",
        "Virginia Beach",
        "Washington",
        "Baltimore",
        "New York",
        "Philadelphia",
        "Boston",
        "Atlanta",
        "Charlotte",
        "Raleigh",
        "Pittsburgh",
        "Columbus",
    ],
    company_suffix: &["Inc.", "LLC", "Corp.", "& Sons", "Partners"],
    phone: "+1 703",
    domain: "com",
};

const COMPANY_STEMS: &[&str] = &[
    "Nordic",
    "Fjäll",
    "Alpen",
    "Atlantic",
    "Granite",
    "Blue River",
    "Polar",
    "Summit",
    "Harbor",
    "Lumen",
    "Ember",
    "Cobalt",
    "Birch",
    "Oak",
    "Meridian",
    "Vista",
    "Falcon",
    "Nova",
    "Orbit",
    "Pioneer",
    "Quartz",
    "Aurora",
    "Delta",
    "Zenit",
    "Kompass",
];
const COMPANY_TRADES: &[&str] = &[
    "Logistik",
    "Bygg",
    "Data",
    "Design",
    "Consulting",
    "Foods",
    "Energy",
    "Media",
    "Robotics",
    "Health",
    "Finance",
    "Textil",
    "Marine",
    "Software",
    "Analytics",
];
const NOTES: &[&str] = &[
    "Met at the spring fair.",
    "Prefers email over phone.",
    "Decision maker for procurement.",
    "Follow up next quarter.",
    "Interested in the premium plan.",
    "Referred by a partner.",
    "",
    "",
];

pub struct Contact {
    pub name: String,
    pub email: String,
    pub company: String,
    pub city: String,
    pub phone: String,
    pub notes: String,
}

fn ascii_fold(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            'å' | 'ä' | 'á' | 'à' | 'Å' | 'Ä' => Some('a'),
            'ö' | 'ó' | 'Ö' => Some('o'),
            'ü' | 'Ü' => Some('u'),
            'é' | 'è' | 'ë' => Some('e'),
            'í' => Some('i'),
            'ß' => Some('s'),
            c if c.is_ascii_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

pub fn contact(rng: &mut Rng, locale: Locale) -> Contact {
    let w = match locale {
        Locale::Swedish => &SWEDISH,
        Locale::German => &GERMAN,
        Locale::American => &AMERICAN,
    };
    let first = rng.pick(w.first);
    let last = rng.pick(w.last);
    let company = format!(
        "{} {} {}",
        rng.pick(COMPANY_STEMS),
        rng.pick(COMPANY_TRADES),
        rng.pick(w.company_suffix)
    );
    let domain_stem = ascii_fold(company.split(' ').next().unwrap_or("example"));
    Contact {
        email: format!(
            "{}.{}{}@{}.{}",
            ascii_fold(first),
            ascii_fold(last),
            rng.next_u64() % 100,
            domain_stem,
            w.domain
        ),
        name: format!("{first} {last}"),
        company,
        city: rng.pick(w.cities).to_string(),
        phone: format!(
            "{} {:03} {:02} {:02}",
            w.phone,
            rng.next_u64() % 1000,
            rng.next_u64() % 100,
            rng.next_u64() % 100
        ),
        notes: rng.pick(NOTES).to_string(),
    }
}

/// Fills an org's contact book up to `target` contacts, deterministically from `seed`. Does
/// nothing if it already holds that many, so it is safe to run at every start. Goes through the
/// node's write path, so it needs the org hosted here and a live lease.
pub fn seed_contacts(
    writer: &Writer,
    org: &OrgId,
    locale: Locale,
    target: u64,
    seed: u64,
) -> Result<u64, HemvistError> {
    let have: i64 = writer.read(org, |c| {
        c.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
    })?;
    let have = have.max(0) as u64;
    if have >= target {
        return Ok(0);
    }
    let mut rng = Rng::new(seed);
    for _ in 0..have {
        contact(&mut rng, locale);
    }
    let start = now_ms() - (target as i64) * 1_000;
    let mut made = have;
    while made < target {
        let batch = (target - made).min(10_000);
        writer.write(org, |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO contacts (name, email, company, city, phone, notes, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )?;
            for i in 0..batch {
                let c = contact(&mut rng, locale);
                let at = start + ((made + i) as i64) * 1_000;
                stmt.execute(rusqlite::params![c.name, c.email, c.company, c.city, c.phone, c.notes, at])?;
            }
            Ok(())
        })?;
        made += batch;
    }
    // A bulk load leaves the full-text index in many small segments; merge them, as a node
    // would after any large import.
    writer.write(org, |tx| {
        tx.execute(
            "INSERT INTO contacts_fts(contacts_fts) VALUES ('optimize')",
            [],
        )
    })?;
    Ok(target - have)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_contacts() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            let (x, y) = (
                contact(&mut a, Locale::Swedish),
                contact(&mut b, Locale::Swedish),
            );
            assert_eq!((x.name, x.email), (y.name, y.email));
        }
    }
}
