//! Writes real MaxMind DB files (format 2.0) in MaxMind's own GeoIP2/GeoLite2 Country layout
//! (`country.iso_code`), so tests can prove the control plane reads the files users deploy.
//! IPv4 trees only, 24-bit records.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rec {
    Empty,
    Node(u32),
    Data(u32),
}

enum Value {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(BTreeMap<String, Value>),
    Array(Vec<Value>),
}

fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(size < 29, "tiny writer: sizes below 29 only");
    if kind <= 7 {
        out.push((kind << 5) | size as u8);
    } else {
        out.push(size as u8);
        out.push(kind - 7);
    }
}

fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(n) => uint(out, 5, u64::from(*n)),
        Value::U32(n) => uint(out, 6, u64::from(*n)),
        Value::U64(n) => uint(out, 9, *n),
        Value::Map(m) => {
            control(out, 7, m.len());
            for (k, v) in m {
                encode(&Value::Str(k.clone()), out);
                encode(v, out);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for i in items {
                encode(i, out);
            }
        }
    }
}

fn uint(out: &mut Vec<u8>, kind: u8, n: u64) {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// `networks`: (network, prefix length, ISO country code).
pub fn country_db(networks: &[(Ipv4Addr, u8, &str)]) -> Vec<u8> {
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    let mut data = Vec::new();
    for (net, len, iso) in networks {
        let offset = data.len() as u32;
        encode(
            &map(vec![(
                "country",
                map(vec![
                    ("iso_code", Value::Str(iso.to_string())),
                    (
                        "names",
                        map(vec![("en", Value::Str(format!("Country {iso}")))]),
                    ),
                ]),
            )]),
            &mut data,
        );
        let bits = u32::from(*net);
        let mut node = 0usize;
        for i in 0..*len {
            let bit = ((bits >> (31 - i)) & 1) as usize;
            if i + 1 == *len {
                nodes[node][bit] = Rec::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(n) => n as usize,
                    _ => {
                        nodes.push([Rec::Empty, Rec::Empty]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n as u32);
                        n
                    }
                };
            }
        }
    }
    let count = nodes.len() as u32;
    let mut out = Vec::new();
    for pair in &nodes {
        for rec in pair {
            let v = match rec {
                Rec::Empty => count,
                Rec::Node(n) => *n,
                Rec::Data(off) => count + 16 + off,
            };
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    encode(
        &map(vec![
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(1_700_000_000)),
            ("database_type", Value::Str("GeoLite2-Country".into())),
            (
                "description",
                map(vec![("en", Value::Str("hemvist test".into()))]),
            ),
            ("ip_version", Value::U16(4)),
            ("languages", Value::Array(vec![Value::Str("en".into())])),
            ("node_count", Value::U32(count)),
            ("record_size", Value::U16(24)),
        ]),
        &mut out,
    );
    out
}
