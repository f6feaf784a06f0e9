//! Form bodies (`application/x-www-form-urlencoded`), decoded strictly: a field whose bytes are
//! not UTF-8 is refused (400), never stored with U+FFFD in place of what the user sent. Too large
//! a body is 413 before it is read further, another content type 415.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::Response;
use percent_encoding::percent_decode;

use super::context::{refuse, wants_json};

pub type Fields = HashMap<String, String>;

/// The fields of a form post; the last of repeated names wins.
pub struct Form(pub Fields);

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let json = wants_json(req.headers());
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(refuse(
                json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported form",
                "expected a form (application/x-www-form-urlencoded)",
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| refuse(json, e.status(), "Bad request", &e.body_text()))?;
        decode(&body)
            .map(Form)
            .map_err(|message| refuse(json, StatusCode::BAD_REQUEST, "Bad request", &message))
    }
}

/// `a=1&b=x+y%21` → {a: "1", b: "x y!"}; an error names the field that is not UTF-8.
pub fn decode(body: &[u8]) -> Result<Fields, String> {
    let mut fields = Fields::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let name = component(name).ok_or("a form field's name is not valid UTF-8")?;
        let value =
            component(value).ok_or_else(|| format!("the field {name:?} is not valid UTF-8"))?;
        fields.insert(name, value);
    }
    Ok(fields)
}

fn component(raw: &[u8]) -> Option<String> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    String::from_utf8(percent_decode(&spaced).collect()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_decode_as_browsers_encode_them() {
        let f = decode(b"name=%C3%85sa+%C3%96berg&empty=&bare&a%26b=c%3Dd&x=1&x=2").unwrap();
        assert_eq!(f["name"], "Åsa Öberg");
        assert_eq!(f["empty"], "");
        assert_eq!(f["bare"], "");
        assert_eq!(f["a&b"], "c=d");
        assert_eq!(f["x"], "2");
        assert_eq!(decode(b"q=100%").unwrap()["q"], "100%");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused() {
        for body in [&b"name=%FF"[..], b"name=\xff\xfe", b"%C3=x", b"n=%C3%28"] {
            assert!(decode(body).is_err(), "{body:?}");
        }
    }
}
