//! Text folding shared by the search index and the query parser: lower case, diacritics removed,
//! split into words of letters and digits. It mirrors FTS5's `unicode61 remove_diacritics 2`
//! for the Latin scripts contact books are written in, so `asa` and `Åsa` meet.

/// The base letter of a Latin letter with diacritics, or the letter itself (lower-cased).
fn fold_char(c: char, out: &mut String) {
    let base = match c {
        'À'..='Å' | 'à'..='å' | 'Ā' | 'ā' | 'Ă' | 'ă' | 'Ą' | 'ą' => 'a',
        'Æ' | 'æ' => {
            out.push_str("ae");
            return;
        }
        'Ç' | 'ç' | 'Ć' | 'ć' | 'Ĉ' | 'ĉ' | 'Ċ' | 'ċ' | 'Č' | 'č' => 'c',
        'Ď' | 'ď' | 'Đ' | 'đ' | 'Ð' | 'ð' => 'd',
        'È'..='Ë' | 'è'..='ë' | 'Ē' | 'ē' | 'Ĕ' | 'ĕ' | 'Ė' | 'ė' | 'Ę' | 'ę' | 'Ě' | 'ě' => {
            'e'
        }
        'Ĝ' | 'ĝ' | 'Ğ' | 'ğ' | 'Ġ' | 'ġ' | 'Ģ' | 'ģ' => 'g',
        'Ĥ' | 'ĥ' | 'Ħ' | 'ħ' => 'h',
        'Ì'..='Ï' | 'ì'..='ï' | 'Ĩ' | 'ĩ' | 'Ī' | 'ī' | 'Ĭ' | 'ĭ' | 'Į' | 'į' | 'İ' | 'ı' => {
            'i'
        }
        'Ĵ' | 'ĵ' => 'j',
        'Ķ' | 'ķ' => 'k',
        'Ĺ' | 'ĺ' | 'Ļ' | 'ļ' | 'Ľ' | 'ľ' | 'Ŀ' | 'ŀ' | 'Ł' | 'ł' => 'l',
        'Ñ' | 'ñ' | 'Ń' | 'ń' | 'Ņ' | 'ņ' | 'Ň' | 'ň' => 'n',
        'Ò'..='Ö' | 'Ø' | 'ò'..='ö' | 'ø' | 'Ō' | 'ō' | 'Ŏ' | 'ŏ' | 'Ő' | 'ő' => 'o',
        'Œ' | 'œ' => {
            out.push_str("oe");
            return;
        }
        'Ŕ' | 'ŕ' | 'Ŗ' | 'ŗ' | 'Ř' | 'ř' => 'r',
        'Ś' | 'ś' | 'Ŝ' | 'ŝ' | 'Ş' | 'ş' | 'Š' | 'š' => 's',
        'ß' => {
            out.push_str("ss");
            return;
        }
        'Ţ' | 'ţ' | 'Ť' | 'ť' | 'Ŧ' | 'ŧ' => 't',
        'Þ' | 'þ' => {
            out.push_str("th");
            return;
        }
        'Ù'..='Ü'
        | 'ù'..='ü'
        | 'Ũ'
        | 'ũ'
        | 'Ū'
        | 'ū'
        | 'Ŭ'
        | 'ŭ'
        | 'Ů'
        | 'ů'
        | 'Ű'
        | 'ű'
        | 'Ų'
        | 'ų' => 'u',
        'Ŵ' | 'ŵ' => 'w',
        'Ý' | 'ý' | 'ÿ' | 'Ÿ' | 'Ŷ' | 'ŷ' => 'y',
        'Ź' | 'ź' | 'Ż' | 'ż' | 'Ž' | 'ž' => 'z',
        c => {
            out.extend(c.to_lowercase());
            return;
        }
    };
    out.push(base);
}

/// Folded words of `s`: runs of letters and digits; everything else (punctuation, quotes,
/// operators, control and format characters, combining marks) separates or vanishes.
pub fn words(s: &str) -> Vec<String> {
    let mut joined = String::new();
    fold_into(s, &mut joined);
    joined
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Appends the folded words of `s` to `out`, each followed by one space: the allocation-free
/// form of [`words`] that the search index stores.
pub fn fold_into(s: &str, out: &mut String) {
    let mut in_word = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
            in_word = true;
            continue;
        }
        if is_combining(c) {
            continue;
        }
        if c.is_alphanumeric() {
            fold_char(c, out);
            in_word = true;
        } else if in_word {
            out.push(' ');
            in_word = false;
        }
    }
    if in_word {
        out.push(' ');
    }
}

/// Combining diacritical marks: dropped, so a decomposed `é` folds like a composed one.
fn is_combining(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// Whether `word` (as written) starts with the folded prefix `prefix`.
pub fn starts_with_folded(word: &str, prefix: &str) -> bool {
    words(word).first().is_some_and(|w| w.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_diacritics_and_case() {
        assert_eq!(words("Åsa Öberg-Müller"), ["asa", "oberg", "muller"]);
        assert_eq!(words("Linne\u{0301}a"), ["linnea"]);
        assert_eq!(words("Straße"), ["strasse"]);
    }

    #[test]
    fn hostile_input_becomes_plain_words() {
        assert_eq!(
            words("\"a* OR (b) NEAR(c, d) -e ^f email:g"),
            ["a", "or", "b", "near", "c", "d", "e", "f", "email", "g"]
        );
        assert_eq!(words("a\0b\u{202e}c"), ["a", "b", "c"]);
        assert!(words("' ; -- /* */").is_empty());
    }
}
