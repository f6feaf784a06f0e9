//! Checked identifiers. Each newtype's constructor is its only validation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {shown}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    /// The offending input, quoted and shortened so it is safe to print.
    pub shown: String,
    pub reason: &'static str,
}

const MAX_ID_LEN: usize = 63;

/// `[a-z0-9][a-z0-9-]{0,62}`, not ending in `-` and with no `--` (which separates a branch from
/// its parent): the one shape shared by org, region and node ids.
fn check_slug(kind: &'static str, s: &str) -> Result<(), IdError> {
    let fail = |reason| {
        let mut shown: String = s.chars().take(40).flat_map(char::escape_default).collect();
        if s.chars().count() > 40 {
            shown.push('…');
        }
        Err(IdError {
            kind,
            shown: format!("\"{shown}\""),
            reason,
        })
    };
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return fail("it is empty");
    }
    if bytes.len() > MAX_ID_LEN {
        return fail("it is longer than 63 characters");
    }
    if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) {
        return fail("it must start with a lowercase letter or a digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return fail("only lowercase letters, digits and '-' are allowed");
    }
    if bytes.ends_with(b"-") {
        return fail("it must not end with '-'");
    }
    if s.contains("--") {
        return fail("'--' is reserved (it separates a branch from its parent)");
    }
    Ok(())
}

/// An org id: a slug, or a branch's `PARENT--NAME` (two slugs, joined by the one `--` allowed).
fn check_org(kind: &'static str, s: &str) -> Result<(), IdError> {
    match s.split_once("--") {
        Some((parent, name)) if !parent.is_empty() && !name.is_empty() => {
            check_slug(kind, parent)?;
            check_slug(kind, name)?;
            if s.len() > MAX_ID_LEN {
                return check_slug(kind, s);
            }
            Ok(())
        }
        _ => check_slug(kind, s),
    }
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        slug_id!($(#[$doc])* $name, $kind, check_slug);
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                $check($kind, s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $check($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", $kind, self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

slug_id!(
    /// An organization (tenant). Safe to join into a file path or an object key. A branch of an
    /// org is `PARENT--NAME`.
    OrgId,
    "org id",
    check_org
);

impl OrgId {
    /// The id of `parent`'s branch `name` (`PARENT--NAME`). A branch of a branch is refused.
    pub fn branch(parent: &OrgId, name: &str) -> Result<OrgId, IdError> {
        if parent.is_branch() {
            return Err(IdError {
                kind: "org id",
                shown: format!("\"{parent}\""),
                reason: "a branch cannot be branched (branch its parent)",
            });
        }
        check_slug("branch name", name)?;
        OrgId::parse(&format!("{parent}--{name}"))
    }

    /// The org a branch was made from; `None` for an org that is no branch.
    pub fn parent(&self) -> Option<OrgId> {
        self.0.split_once("--").map(|(p, _)| OrgId(p.to_string()))
    }

    pub fn is_branch(&self) -> bool {
        self.0.contains("--")
    }
}
slug_id!(
    /// A region, such as `eu-north`.
    RegionId,
    "region id"
);
slug_id!(
    /// A node, unique across the fleet.
    NodeId,
    "node id"
);

/// The number the control plane issues with every placement. Strictly increasing; the holder of
/// an org's current generation is its only writer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Generation(u64);

impl Generation {
    pub const FIRST: Generation = Generation(1);

    pub fn new(n: u64) -> Result<Self, IdError> {
        if n == 0 {
            return Err(IdError {
                kind: "generation",
                shown: "0".into(),
                reason: "generations start at 1",
            });
        }
        Ok(Self(n))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

impl TryFrom<u64> for Generation {
    type Error = IdError;
    fn try_from(n: u64) -> Result<Self, IdError> {
        Self::new(n)
    }
}

impl From<Generation> for u64 {
    fn from(g: Generation) -> u64 {
        g.0
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_id_is_its_parent_and_name_joined_once() {
        let acme = OrgId::parse("acme").unwrap();
        let qa = OrgId::branch(&acme, "qa-1").unwrap();
        assert_eq!(qa.as_str(), "acme--qa-1");
        assert_eq!(qa.parent(), Some(acme.clone()));
        assert!(qa.is_branch() && !acme.is_branch());
        assert_eq!(OrgId::parse("acme--qa-1").unwrap(), qa);
        assert!(OrgId::branch(&qa, "x").is_err(), "no branch of a branch");
        assert!(OrgId::branch(&acme, "Bad").is_err());
        assert!(OrgId::branch(&acme, &"a".repeat(60)).is_err(), "too long");
        assert!(NodeId::parse("a--b").is_err() && RegionId::parse("a--b").is_err());
    }

    #[test]
    fn accepts_slugs() {
        for ok in ["a", "acme", "acme-ab", "a-b-c", "0x", &"a".repeat(63)] {
            assert!(OrgId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_hostile_ids() {
        let long = "a".repeat(1000);
        for bad in [
            "",
            "-acme",
            "Acme",
            "../etc",
            "a/b",
            "a\0b",
            "a b",
            "a'b",
            "a\"b",
            "å",
            "a\u{202e}b",
            "a\u{0301}",
            ".",
            "..",
            &long,
            "a.b",
            "ａ",
            "trail-",
            "a--b--c",
            "a---b",
            "a--",
            "--b",
            "-",
        ] {
            let err = OrgId::parse(bad).expect_err(bad);
            assert!(err.to_string().len() < 200);
        }
    }

    #[test]
    fn generation_zero_is_refused() {
        assert!(Generation::new(0).is_err());
        assert_eq!(Generation::FIRST.next().get(), 2);
    }
}
