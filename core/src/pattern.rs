//! Regular expressions from the config (route matching, path rewrites): byte expressions,
//! compiled once per config, with a size limit so that no config can make matching slow or
//! large (the `regex` crate matches in linear time; the limit bounds the automata).

use regex::bytes::{Regex, RegexBuilder};

/// Most a compiled expression may take (its NFA, and each lazy DFA's cache).
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// Compiles `re` within [`REGEX_SIZE_LIMIT`]; `Err` says why not, for the config's message.
pub fn compile(re: &str) -> Result<Regex, String> {
    RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => {
                format!(
                    "compiles to more than {} KiB: simplify it",
                    REGEX_SIZE_LIMIT / 1024
                )
            }
            other => other.to_string(),
        })
}

/// Compiles `re` to match a whole value (as a route condition does), not a part of it.
pub fn compile_whole(re: &str) -> Result<Regex, String> {
    compile(re)?;
    compile(&format!("^(?:{re})$"))
}

/// An expression that matches nothing (`a` before the start of the text).
pub fn never() -> Regex {
    #[allow(clippy::expect_used)]
    Regex::new("a^").expect("a constant expression compiles")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_values_only() {
        let re = compile_whole("a+").unwrap();
        assert!(re.is_match(b"aaa") && !re.is_match(b"baaa") && !re.is_match(b"aab"));
        assert!(compile_whole("a|b").unwrap().is_match(b"b"));
        assert!(compile_whole(")(").is_err());
        assert!(!never().is_match(b"") && !never().is_match(b"a"));
    }
}
