//! The proxy's config file: the model ([`model`]), its decoding from YAML ([`decode`]), and
//! checks across fields ([`checks`]: names unique, clusters referred to exist). The fields are
//! documented in docs/config.md.
//!
//! [`Config::parse`] returns every problem it finds, each naming its field path, so that
//! `ringmesh check` can print them all at once and a reload can log why it was refused.

mod checks;
pub mod decode;
pub mod model;

pub use decode::ConfigError;
pub use decode::cluster::{check_endpoint, valid_zone};
pub use decode::listener::valid_dns_name;
pub use decode::route::DEFAULT_RETRY_ON;
pub use model::*;

use decode::Decoder;

impl Config {
    /// Parses and checks a config; every problem is reported.
    pub fn parse(source: &str) -> Result<Config, Vec<ConfigError>> {
        let docs = decode::parse(source).map_err(|e| vec![e])?;
        if docs.len() > 1 {
            return Err(vec![ConfigError {
                path: String::new(),
                line: None,
                message: "expected one YAML document".into(),
            }]);
        }
        let Some(root) = decode::root(&docs) else {
            return Err(vec![ConfigError {
                path: String::new(),
                line: None,
                message: "the config is empty".into(),
            }]);
        };
        let mut d = Decoder::default();
        let config = decode::file::decode_config(&mut d, root);
        if let Some(c) = &config {
            checks::check(&mut d, c);
        }
        match config {
            Some(c) if d.errors.is_empty() => Ok(c),
            _ => Err(d.errors),
        }
    }

    /// The config as JSON, for the admin API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
