//! A YAML walker that turns nodes into typed values and collects *every* error with the path of
//! the field it concerns (`listeners[0].routes[1].timeout: ...`), instead of stopping at the first.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

mod answers;
pub mod cluster;
mod edits;
pub mod file;
pub mod listener;
pub mod route;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path, such as `listeners[0].bind`; empty for the document itself.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(config)"
        } else {
            &self.path
        };
        match self.line {
            Some(l) => write!(f, "{path}: {} (line {l})", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// A node and where it is.
#[derive(Clone, Copy)]
pub struct Node<'a, 'y> {
    yaml: &'a MarkedYaml<'y>,
}

impl Node<'_, '_> {
    fn line(&self) -> Option<usize> {
        let l = self.yaml.span.start.line();
        (l > 0).then_some(l)
    }

    /// Whether the node is `false` or the word `off`: a feature switched off.
    pub fn is_off(&self) -> bool {
        match &self.yaml.data {
            YamlData::Value(Scalar::Boolean(false)) => true,
            YamlData::Value(Scalar::String(s)) => s == "off",
            _ => false,
        }
    }

    /// Whether the node is a plain value (a string, number or boolean), not a list or mapping.
    pub fn is_scalar(&self) -> bool {
        matches!(self.yaml.data, YamlData::Value(_))
    }

    /// The node's value, if it is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.yaml.data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => None,
        }
    }

    /// The node's text, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.yaml.data {
            YamlData::Value(Scalar::String(s)) => Some(s.as_ref()),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.yaml.data, YamlData::Value(Scalar::Null))
    }

    fn kind(&self) -> &'static str {
        match &self.yaml.data {
            YamlData::Value(Scalar::Null) => "null",
            YamlData::Value(Scalar::Boolean(_)) => "a boolean",
            YamlData::Value(Scalar::Integer(_)) => "an integer",
            YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
            YamlData::Value(Scalar::String(_)) => "a string",
            YamlData::Sequence(_) => "a list",
            YamlData::Mapping(_) => "a mapping",
            _ => "an unsupported value",
        }
    }
}

/// Collects errors while decoding.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Every error so far.
    pub errors: Vec<ConfigError>,
    /// Line of each field decoded, for errors found later by checks across fields.
    lines: std::collections::HashMap<String, usize>,
}

/// The fields of a mapping, by name.
pub struct Fields<'a, 'y> {
    entries: Vec<(&'a str, Node<'a, 'y>)>,
    path: String,
}

impl<'a, 'y> Fields<'a, 'y> {
    /// The field `name`, with its path; `None` when absent or null.
    pub fn get(&self, name: &str) -> Option<(Node<'a, 'y>, String)> {
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .filter(|(_, n)| !n.is_null())
            .map(|(_, n)| (*n, join(&self.path, name)))
    }

    /// The path of field `name`.
    pub fn path_of(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// The mapping's own path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// `a.b`, or `b` at the root.
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Parses a YAML document. A syntax error is returned as a single error.
pub fn parse(source: &str) -> Result<Vec<MarkedYaml<'_>>, ConfigError> {
    MarkedYaml::load_from_str(source).map_err(|e| ConfigError {
        path: String::new(),
        line: Some(e.marker().line()),
        message: format!("invalid YAML: {}", e.info()),
    })
}

/// The root node of a parsed document.
pub fn root<'a, 'y>(docs: &'a [MarkedYaml<'y>]) -> Option<Node<'a, 'y>> {
    docs.first().map(|yaml| Node { yaml })
}

impl Decoder {
    /// Records an error at `path` about `node` (or, without a node, the field decoded there).
    pub fn error(&mut self, path: &str, node: Option<Node<'_, '_>>, message: impl Into<String>) {
        let line = node
            .and_then(|n| n.line())
            .or_else(|| self.lines.get(path).copied());
        self.errors.push(ConfigError {
            path: path.to_string(),
            line,
            message: message.into(),
        });
    }

    fn mark(&mut self, path: &str, node: Node<'_, '_>) {
        if let Some(l) = node.line() {
            self.lines.insert(path.to_string(), l);
        }
    }

    fn expected(&mut self, path: &str, node: Node<'_, '_>, what: &str) {
        let got = node.kind();
        self.error(path, Some(node), format!("expected {what}, got {got}"));
    }

    /// A mapping whose keys must all be in `known`; unknown keys are errors naming the key.
    pub fn mapping<'a, 'y>(
        &mut self,
        node: Node<'a, 'y>,
        path: &str,
        known: &[&str],
    ) -> Option<Fields<'a, 'y>> {
        self.mark(path, node);
        let YamlData::Mapping(map) = &node.yaml.data else {
            self.expected(path, node, "a mapping");
            return None;
        };
        let mut entries = Vec::with_capacity(map.len());
        for (k, v) in map.iter() {
            let key = match &k.data {
                YamlData::Value(Scalar::String(s)) => s.as_ref(),
                _ => {
                    self.error(path, Some(Node { yaml: k }), "keys must be strings");
                    continue;
                }
            };
            if !known.contains(&key) {
                let hint = suggest(key, known)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                self.error(
                    &join(path, key),
                    Some(Node { yaml: k }),
                    format!(
                        "unknown field `{key}`{hint}; expected one of: {}",
                        known.join(", ")
                    ),
                );
                continue;
            }
            entries.push((key, Node { yaml: v }));
        }
        Some(Fields {
            entries,
            path: path.to_string(),
        })
    }

    /// The items of a list, each with its path.
    pub fn list<'a, 'y>(&mut self, node: Node<'a, 'y>, path: &str) -> Vec<(Node<'a, 'y>, String)> {
        self.mark(path, node);
        match &node.yaml.data {
            YamlData::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, yaml)| (Node { yaml }, format!("{path}[{i}]")))
                .collect(),
            _ => {
                self.expected(path, node, "a list");
                Vec::new()
            }
        }
    }

    /// `true` or `false`.
    pub fn boolean(&mut self, node: Node<'_, '_>, path: &str) -> Option<bool> {
        self.mark(path, node);
        match &node.yaml.data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => {
                self.expected(path, node, "true or false");
                None
            }
        }
    }

    /// A string (numbers and booleans are refused: quote them).
    pub fn string(&mut self, node: Node<'_, '_>, path: &str) -> Option<String> {
        self.mark(path, node);
        match &node.yaml.data {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            _ => {
                self.expected(path, node, "a string");
                None
            }
        }
    }

    /// A string or a number written as text (for header values such as `"1"` or `1`).
    pub fn text(&mut self, node: Node<'_, '_>, path: &str) -> Option<String> {
        self.mark(path, node);
        match &node.yaml.data {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
            YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
            _ => {
                self.expected(path, node, "a string");
                None
            }
        }
    }

    /// A non-negative integer no larger than `max`.
    pub fn integer(&mut self, node: Node<'_, '_>, path: &str, max: u64) -> Option<u64> {
        self.mark(path, node);
        match &node.yaml.data {
            YamlData::Value(Scalar::Integer(i)) if *i >= 0 && (*i as u64) <= max => Some(*i as u64),
            YamlData::Value(Scalar::Integer(i)) => {
                self.error(
                    path,
                    Some(node),
                    format!("{i} is out of range (0 to {max})"),
                );
                None
            }
            _ => {
                self.expected(path, node, "an integer");
                None
            }
        }
    }

    /// One of `choices`.
    pub fn choice<'c>(
        &mut self,
        node: Node<'_, '_>,
        path: &str,
        choices: &[&'c str],
    ) -> Option<&'c str> {
        let s = self.string(node, path)?;
        match choices.iter().find(|c| **c == s) {
            Some(c) => Some(c),
            None => {
                self.error(
                    path,
                    Some(node),
                    format!("`{s}` is not one of: {}", choices.join(", ")),
                );
                None
            }
        }
    }

    /// An `ip:port` address.
    pub fn socket_addr(&mut self, node: Node<'_, '_>, path: &str) -> Option<SocketAddr> {
        let s = self.string(node, path)?;
        let parsed = s.parse::<SocketAddr>().ok().or_else(|| {
            s.strip_prefix("localhost:")
                .and_then(|p| format!("127.0.0.1:{p}").parse().ok())
        });
        if parsed.is_none() {
            self.error(
                path,
                Some(node),
                format!("`{s}` is not an address of the form ip:port"),
            );
        }
        parsed
    }

    /// A duration such as `250ms`, `5s`, `1.5s`, `1m`, `1h`.
    pub fn duration(&mut self, node: Node<'_, '_>, path: &str) -> Option<Duration> {
        let s = self.string(node, path)?;
        let d = parse_duration(&s);
        if d.is_none() {
            self.error(
                path,
                Some(node),
                format!(
                    "`{s}` is not a duration (a number and a unit: ms, s, m or h, such as 250ms)"
                ),
            );
        }
        d
    }

    /// A positive duration.
    pub fn positive_duration(&mut self, node: Node<'_, '_>, path: &str) -> Option<Duration> {
        let d = self.duration(node, path)?;
        if d.is_zero() {
            self.error(path, Some(node), "must be greater than zero");
            return None;
        }
        Some(d)
    }

    /// A size in bytes: an integer, or a string such as `64KiB`, `10MiB`, `1GB`.
    pub fn size(&mut self, node: Node<'_, '_>, path: &str) -> Option<u64> {
        if let YamlData::Value(Scalar::Integer(_)) = &node.yaml.data {
            return self.integer(node, path, u64::MAX >> 1);
        }
        let s = self.string(node, path)?;
        let v = parse_size(&s);
        if v.is_none() {
            self.error(
                path,
                Some(node),
                format!(
                    "`{s}` is not a size (bytes, or a number with KiB, MiB, GiB, KB, MB or GB)"
                ),
            );
        }
        v
    }

    /// A fraction given as a percentage with decimals (`0.5%`, `10`, `100%`), as 0 to 1.
    pub fn fraction(&mut self, node: Node<'_, '_>, path: &str) -> Option<f64> {
        self.mark(path, node);
        let v = match &node.yaml.data {
            YamlData::Value(Scalar::Integer(i)) => Some(*i as f64),
            YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.into_inner()),
            YamlData::Value(Scalar::String(s)) => {
                s.strip_suffix('%').and_then(|n| n.trim().parse().ok())
            }
            _ => None,
        };
        match v {
            Some(v) if (0.0..=100.0).contains(&v) => Some(v / 100.0),
            _ => {
                self.error(path, Some(node), "expected a percentage from 0% to 100%");
                None
            }
        }
    }

    /// A percentage such as `20%` or `20`.
    pub fn percent(&mut self, node: Node<'_, '_>, path: &str) -> Option<u32> {
        self.mark(path, node);
        let v = match &node.yaml.data {
            YamlData::Value(Scalar::Integer(i)) => Some(*i),
            YamlData::Value(Scalar::String(s)) => {
                s.strip_suffix('%').and_then(|n| n.trim().parse().ok())
            }
            _ => None,
        };
        match v {
            Some(v) if (0..=100).contains(&v) => Some(v as u32),
            _ => {
                self.error(path, Some(node), "expected a percentage from 0% to 100%");
                None
            }
        }
    }
}

/// The entries of a mapping whose keys are free-form (header names): (key, value, path).
pub fn free_mapping<'a, 'y>(
    d: &mut Decoder,
    node: Node<'a, 'y>,
    path: &str,
) -> Vec<(String, Node<'a, 'y>, String)> {
    let YamlData::Mapping(map) = &node.yaml.data else {
        d.expected(path, node, "a mapping");
        return Vec::new();
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map.iter() {
        match &k.data {
            YamlData::Value(Scalar::String(s)) => {
                out.push((s.to_string(), Node { yaml: v }, join(path, s)));
            }
            _ => d.error(path, Some(Node { yaml: k }), "keys must be strings"),
        }
    }
    out
}

/// Parses `250ms`, `5s`, `1.5s`, `1m`, `2h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

/// Parses `65536`, `64KiB`, `10MiB`, `1GiB`, `1KB`, `1MB`, `1GB`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// The known key closest to a misspelt one, if close enough.
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The node as JSON (mapping keys must be strings), for documents handled as data rather than
/// decoded into types: the control plane's desired state.
pub fn to_json(node: Node<'_, '_>, path: &str) -> Result<serde_json::Value, ConfigError> {
    use serde_json::Value;
    let err = |message: String| ConfigError {
        path: path.to_string(),
        line: node.line(),
        message,
    };
    Ok(match &node.yaml.data {
        YamlData::Value(Scalar::Null) => Value::Null,
        YamlData::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        YamlData::Value(Scalar::Integer(i)) => Value::from(*i),
        YamlData::Value(Scalar::FloatingPoint(f)) => serde_json::Number::from_f64(f.into_inner())
            .map(Value::Number)
            .ok_or_else(|| err("numbers must be finite".into()))?,
        YamlData::Value(Scalar::String(s)) => Value::String(s.to_string()),
        YamlData::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, yaml)| to_json(Node { yaml }, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map.iter() {
                let YamlData::Value(Scalar::String(key)) = &k.data else {
                    return Err(err("keys must be strings".into()));
                };
                let p = join(path, key);
                out.insert(key.to_string(), to_json(Node { yaml: v }, &p)?);
            }
            Value::Object(out)
        }
        _ => return Err(err(format!("expected plain data, got {}", node.kind()))),
    })
}

pub(crate) fn required<'a, 'y>(
    d: &mut Decoder,
    f: &Fields<'a, 'y>,
    name: &str,
) -> Option<(Node<'a, 'y>, String)> {
    let r = f.get(name);
    if r.is_none() {
        d.error(&f.path_of(name), None, "required");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["5", "s", "5x", "-1s", ".5s", "5.s", "", "1e3s", "5 s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MB"), Some(1_000_000));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1TiB"), None);
        assert_eq!(parse_size("99999999999999GiB"), None);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("listners", &["listeners", "clusters"]),
            Some("listeners")
        );
        assert_eq!(suggest("zzz", &["listeners", "clusters"]), None);
    }
}
