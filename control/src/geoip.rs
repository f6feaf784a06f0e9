//! IP → ISO country code from a MaxMind-format database.
//!
//! Reads MaxMind's own GeoIP2/GeoLite2 Country and City files (`country.iso_code`, falling back
//! to `registered_country.iso_code`) and compatible files with a flat `country_code` record, such
//! as the CC0 `geo-whois-asn-country` database. An answer is an upper-case two-letter code or
//! nothing; anything else in the file is treated as nothing.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use maxminddb::{path, Reader};

pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    pub database_type: String,
}

impl GeoIp {
    pub fn open(file: &Path) -> anyhow::Result<Self> {
        let reader = Reader::open_readfile(file)
            .with_context(|| format!("open GeoIP database {}", file.display()))?;
        let database_type = reader.metadata().database_type.clone();
        Ok(Self {
            reader,
            database_type,
        })
    }

    /// The country the database places `ip` in, upper-case ISO 3166-1 alpha-2.
    pub fn country(&self, ip: IpAddr) -> anyhow::Result<Option<String>> {
        let found = self.reader.lookup(ip).context("GeoIP lookup")?;
        if !found.has_data() {
            return Ok(None);
        }
        let candidates = [
            found.decode_path::<String>(&path!["country", "iso_code"]),
            found.decode_path::<String>(&path!["registered_country", "iso_code"]),
            found.decode_path::<String>(&path!["country_code"]),
        ];
        for c in candidates {
            if let Ok(Some(code)) = c {
                let code = code.trim().to_ascii_uppercase();
                if code.len() == 2 && code.chars().all(|ch| ch.is_ascii_uppercase()) {
                    return Ok(Some(code));
                }
            }
        }
        Ok(None)
    }
}
