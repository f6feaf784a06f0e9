//! The formats round trip through [`decode`] and refuse what was damaged, moved or sealed with
//! another key, naming it.

use std::collections::BTreeMap;

use hemvist_proto::{DataKey, OrgId};

use super::header::HEADER_LEN;
use super::*;

fn name(kind: Kind, start: u64, end: u64) -> ObjectName {
    ObjectName {
        org: OrgId::parse("acme").expect("org"),
        generation: 3,
        kind,
        start,
        end,
        time_ms: 1_764_000_000_123,
    }
}

#[test]
fn keys_round_trip_and_sort_by_lsn() {
    let s = name(Kind::Segment, 0x10, 0x2a);
    assert_eq!(
        s.key(),
        "tenants/acme/g0000000003/wal/0000000000000010-000000000000002a-1764000000123.hvb"
    );
    assert_eq!(ObjectName::parse(&s.key()), Some(s.clone()));
    let snap = name(Kind::Snapshot, 0x2a, 0x2a);
    assert_eq!(ObjectName::parse(&snap.key()), Some(snap));
    assert!(name(Kind::Segment, 9, 0x10).key() < s.key());
    for bad in [
        "tenants/acme/g3/wal/10-2a-1.txt",
        "tenants/../g3/snap/1-1.hvb",
        "other/acme/g3/snap/1-1.hvb",
        "tenants/acme/g3/wal/2a-10-1.hvb",
    ] {
        assert_eq!(ObjectName::parse(bad), None, "{bad}");
    }
}

#[test]
fn objects_round_trip_and_damage_is_named() {
    let seg = name(Kind::Segment, 1, 5);
    let pages: BTreeMap<u32, Vec<u8>> = [(1, vec![7u8; 512]), (4, vec![9u8; 512])].into();
    let bytes = encode_segment(&seg, 512, 4, &pages, None);
    let decoded = decode(&seg, &bytes, None).expect("decode");
    assert_eq!(decoded.body, Body::Pages(pages));
    assert_eq!(decoded.db_pages, 4);
    let mut damaged = bytes.clone();
    damaged[HEADER_LEN + 3] ^= 1;
    let err = decode(&seg, &damaged, None)
        .expect_err("damaged")
        .to_string();
    assert!(
        err.contains(&seg.key()) && err.contains("checksum"),
        "{err}"
    );
    // The right bytes under another name are refused too.
    let other = name(Kind::Segment, 1, 6);
    assert!(decode(&other, &bytes, None).is_err());
    let snap = name(Kind::Snapshot, 5, 5);
    let db = vec![3u8; 1024];
    let decoded = decode(&snap, &encode_snapshot(&snap, 512, &db, None), None).expect("snapshot");
    assert_eq!(
        (decoded.db_pages, decoded.body),
        (2, Body::Database(db.clone()))
    );
    // Sealed with a data key: opened with it; without it or with another, a clear refusal
    // (and never the bytes); damage is still told by the checksum.
    let key = DataKey([9u8; 32]);
    let sealed = encode_snapshot(&snap, 512, &db, Some(&key));
    assert!(
        !sealed.windows(16).any(|w| w == [3u8; 16]),
        "plaintext leaked"
    );
    let opened = decode(&snap, &sealed, Some(&key)).expect("open");
    assert_eq!(opened.body, Body::Database(db));
    let no_key = decode(&snap, &sealed, None)
        .expect_err("no key")
        .to_string();
    assert!(no_key.contains("data key"), "{no_key}");
    let wrong = decode(&snap, &sealed, Some(&DataKey([1u8; 32])))
        .expect_err("wrong key")
        .to_string();
    assert!(wrong.contains("cannot be opened"), "{wrong}");
    assert_eq!(DataKey::from_hex(&key.to_hex()).expect("hex"), key);
    assert!(!format!("{key:?}").contains("09"));
}

#[test]
fn snapshots_are_chunked_and_each_chunk_is_checked() {
    let snap = name(Kind::Snapshot, 7, 7);
    let db: Vec<u8> = (0..CHUNK_RAW * 2 + 4096)
        .map(|i| (i / 4096) as u8)
        .collect();
    let key = DataKey([5u8; 32]);
    let bytes = encode_snapshot(&snap, 4096, &db, Some(&key));
    let SnapshotHead::Chunked(table) = snapshot_head(&snap, &bytes).expect("head") else {
        panic!("a chunked snapshot");
    };
    assert_eq!((table.chunks.len(), table.raw_len), (3, db.len() as u64));
    let mut rebuilt = Vec::new();
    for (i, (off, len, _)) in table.chunks.iter().enumerate() {
        let chunk = &bytes[*off as usize..(*off + *len as u64) as usize];
        rebuilt.extend(open_chunk(&snap, &table, i, chunk, Some(&key)).expect("chunk"));
    }
    assert_eq!(rebuilt, db);
    // A chunk put in another chunk's place is refused, and so is a damaged one.
    let (o0, l0, _) = table.chunks[0];
    let first = &bytes[o0 as usize..(o0 + l0 as u64) as usize];
    assert!(open_chunk(&snap, &table, 1, first, Some(&key)).is_err());
    let mut damaged = first.to_vec();
    damaged[10] ^= 1;
    let err = open_chunk(&snap, &table, 0, &damaged, Some(&key))
        .expect_err("damaged")
        .to_string();
    assert!(err.contains("chunk 0") && err.contains("checksum"), "{err}");
    // Intact but sealed with another key: told apart from damage.
    let err = open_chunk(&snap, &table, 0, first, Some(&DataKey([6u8; 32])))
        .expect_err("wrong key")
        .to_string();
    assert!(err.contains("cannot be opened"), "{err}");
    // One thread's buffers reused across chunks of different sizes.
    let mut buffers = ChunkBuffers::default();
    for i in [2, 0, 2, 1] {
        let (off, len, _) = table.chunks[i];
        let chunk = &bytes[off as usize..(off + len as u64) as usize];
        open_chunk_into(&snap, &table, i, chunk, Some(&key), &mut buffers).expect("reused");
        let at = i * CHUNK_RAW;
        assert_eq!(buffers.raw(), &db[at..(at + CHUNK_RAW).min(db.len())]);
    }
    assert_eq!(
        decode(&snap, &bytes, Some(&key)).expect("whole").body,
        Body::Database(db.clone())
    );
    // Stored plain: the checksum is what finds damage.
    let plain = encode_snapshot(&snap, 4096, &db, None);
    let SnapshotHead::Chunked(table) = snapshot_head(&snap, &plain).expect("head") else {
        panic!("a chunked snapshot");
    };
    let (o0, l0, _) = table.chunks[0];
    let mut damaged = plain[o0 as usize..(o0 + l0 as u64) as usize].to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let err = open_chunk(&snap, &table, 0, &damaged, None)
        .expect_err("damaged plain chunk")
        .to_string();
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn packs_hold_segments_byte_for_byte_and_index_them() {
    let a = name(Kind::Segment, 1, 5);
    let mut b = name(Kind::Segment, 9, 12);
    b.org = OrgId::parse("other").expect("org");
    let pages: BTreeMap<u32, Vec<u8>> = [(1, vec![7u8; 512])].into();
    let segs = vec![
        (a.clone(), encode_segment(&a, 512, 1, &pages, None)),
        (b.clone(), encode_segment(&b, 512, 1, &pages, None)),
    ];
    let (pack, index_len, places) = encode_pack(&segs);
    let key = pack_key("eu-north-1", 1_764_000_000_000, 7, index_len);
    assert_eq!(
        parse_pack_key(&key),
        Some(("eu-north-1".into(), 1_764_000_000_000, index_len as u64))
    );
    let index = decode_pack_index(&key, &pack[pack.len() - index_len..]).expect("index");
    assert_eq!(index.len(), 2);
    for ((n, off, len), (want, (o, l))) in index.iter().zip(segs.iter().map(|s| &s.0).zip(&places))
    {
        assert_eq!((n, off, len), (want, o, l));
        let bytes = &pack[*off as usize..(*off + *len) as usize];
        assert!(decode(n, bytes, None).is_ok());
    }
    let refs = vec![PackRef {
        pack: key.clone(),
        offset: 0,
        len: places[0].1,
        segment: a.key(),
    }];
    let idx = name(Kind::Index, 1, 5);
    assert_eq!(ObjectName::parse(&idx.key()), Some(idx.clone()));
    assert_eq!(
        decode_index(&idx, &encode_index(&refs)).expect("index"),
        refs
    );
    let mut bad = encode_index(&refs);
    bad[3] ^= 1;
    assert!(decode_index(&idx, &bad).is_err());
}

#[test]
fn a_scrubbed_pack_keeps_its_length_and_every_other_segment_in_place() {
    let other = OrgId::parse("other").expect("org");
    let mut b = name(Kind::Segment, 9, 12);
    b.org = other.clone();
    let segs = vec![
        (name(Kind::Segment, 1, 5), vec![7u8; 300]),
        (b.clone(), vec![8u8; 200]),
        (name(Kind::Segment, 5, 9), vec![9u8; 100]),
    ];
    let (pack, index_len, places) = encode_pack(&segs);
    let key = pack_key("n1", 1_764_000_000_000, 1, index_len);
    let mut scrubbed = pack.clone();
    let n = scrub_pack(&key, &mut scrubbed, |n| n.org != other).expect("scrub");
    assert_eq!((n, scrubbed.len()), (2, pack.len()));
    let (bo, bl) = places[1];
    assert_eq!(&scrubbed[..bo as usize], &[0u8; 300][..]);
    assert_eq!(
        &scrubbed[bo as usize..(bo + bl) as usize],
        &pack[bo as usize..(bo + bl) as usize]
    );
    assert!(scrubbed[(bo + bl) as usize..pack.len() - index_len]
        .iter()
        .all(|x| *x == 0));
    let tail = &scrubbed[scrubbed.len() - index_len..];
    assert_eq!(
        decode_pack_index(&key, tail).expect("index"),
        vec![(b, bo, bl)]
    );
    let raw = raw_index(&key, tail).expect("raw");
    assert_eq!(raw.iter().filter(|e| e.0 == SCRUBBED).count(), 2);
    // Again: nothing of them is left, nothing changes.
    let again = scrubbed.clone();
    assert_eq!(
        scrub_pack(&key, &mut scrubbed, |n| n.org != other).expect("again"),
        0
    );
    assert_eq!(scrubbed, again);
    // A damaged index is refused, the pack left as it was.
    let mut damaged = pack.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let before = damaged.clone();
    assert!(scrub_pack(&key, &mut damaged, |_| true).is_err());
    assert_eq!(damaged, before);
}
