//! Where a state-changing request came from. Browsers send `Origin` with every POST (and a
//! `Referer` where an old one does not); a form posted from another site names that site, and a
//! request that names none is refused as well: this node's own pages always lead to one.

use axum::http::{header, HeaderMap};

/// Whether the request's `Origin` (or, without one, its `Referer`) is `public_url`'s origin.
pub fn from_our_pages(headers: &HeaderMap, public_url: &str) -> bool {
    let Some(ours) = origin_of(public_url) else {
        return false;
    };
    let named = match headers.get(header::ORIGIN) {
        Some(origin) => origin.to_str().ok().and_then(origin_of),
        None => headers
            .get(header::REFERER)
            .and_then(|r| r.to_str().ok())
            .and_then(origin_of),
    };
    named.is_some_and(|theirs| theirs == ours)
}

/// `scheme://host[:port]` of an absolute http(s) URL, lower-cased, without a default port;
/// `None` for anything else (`null`, a relative reference, credentials in the authority, a
/// character no host or port has). Safe to put in a header or a CSP source list.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_or_port = |b: u8| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b);
    if authority.is_empty() || !authority.bytes().all(host_or_port) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn only_our_own_origin_passes() {
        let ours = "http://127.0.0.1:7710";
        assert!(from_our_pages(&with(header::ORIGIN, ours), ours));
        assert!(from_our_pages(
            &with(header::ORIGIN, "HTTP://127.0.0.1:7710"),
            ours
        ));
        assert!(from_our_pages(
            &with(
                header::REFERER,
                "http://127.0.0.1:7710/o/a/signin?next=/o/a/"
            ),
            ours
        ));
        assert!(from_our_pages(
            &with(header::ORIGIN, "https://h.example"),
            "https://h.example:443/"
        ));
        for foreign in [
            "http://127.0.0.1:7711",
            "https://127.0.0.1:7710",
            "http://evil.example",
            "http://127.0.0.1:7710.evil.example",
            "null",
            "",
        ] {
            assert!(
                !from_our_pages(&with(header::ORIGIN, foreign), ours),
                "{foreign}"
            );
        }
        assert!(!from_our_pages(
            &with(header::REFERER, "http://user@127.0.0.1:7710/"),
            ours
        ));
        assert!(!from_our_pages(&HeaderMap::new(), ours), "neither header");
        let mut both = with(header::ORIGIN, "http://evil.example");
        both.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:7710/"),
        );
        assert!(!from_our_pages(&both, ours), "Origin wins over Referer");
    }

    #[test]
    fn an_origin_is_safe_for_a_header_or_a_csp_source_list() {
        assert_eq!(
            origin_of("http://LocalHost:7711/o/a/").as_deref(),
            Some("http://localhost:7711")
        );
        assert_eq!(
            origin_of("http://[::1]:80").as_deref(),
            Some("http://[::1]")
        );
        for odd in [
            "http://a b",
            "http://a;script-src",
            "http://a'b",
            "http://a\"b",
            "http://a,b",
            "http://a*",
            "http://",
            "ftp://a",
        ] {
            assert_eq!(origin_of(odd), None, "{odd}");
        }
    }
}
