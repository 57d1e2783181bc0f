//! The crates' modules import each other in one direction only: no module reaches itself
//! through its imports, and the protocol codecs (`head`, `http1`, `h2`, `transport`) never reach
//! the proxy or the worker. A cycle (or a codec that needs the proxy) fails this test with the
//! modules that make it.
//!
//! Imports are read from the source: every path that starts with `crate::`, `super::` or
//! `self::` (in `use` or anywhere in code), resolved to the deepest module it names. Unit test
//! modules are left out: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate's modules (`a::b`, the root being empty) and the modules each one imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_core_has_no_import_cycle_and_its_codecs_never_reach_the_proxy() {
    let g = graph("core/src");
    assert!(g.len() > 40, "modules found: {}", g.len());
    assert_no_cycle("core", &g);
    for codec in ["head", "http1", "h2", "transport"] {
        let reached = reachable(&g, codec);
        for top in ["proxy", "worker", "listener"] {
            let bad: Vec<&String> = reached
                .iter()
                .filter(|m| *m == top || m.starts_with(&format!("{top}::")))
                .collect();
            assert!(bad.is_empty(), "{codec} reaches {bad:?}");
        }
    }
}

#[test]
fn the_control_crate_has_no_import_cycle() {
    let g = graph("control/src");
    assert!(g.len() > 15, "modules found: {}", g.len());
    assert_no_cycle("control", &g);
}

/// The check itself: a cycle made on purpose is found, through `use` groups, `super::` and
/// plain paths in code, and comments and strings are not read as imports.
#[test]
fn a_cycle_is_found() {
    let dir = std::env::temp_dir().join(format!("ringmesh-layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    write("lib.rs", "mod a;\nmod b;\nmod c;\n");
    write("a/mod.rs", "mod inner;\nuse crate::{b::{self, X}};\n");
    write("a/inner.rs", "fn f() { super::super::c::g(); }\n");
    write(
        "b.rs",
        "// crate::c is not an import\nfn s() -> &'static str { \"crate::c\" }\n",
    );
    write("c.rs", "pub fn g() { let _ = crate::a::inner::T; }\n");
    let g = graph_of(&dir);
    assert_eq!(g["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(g["a::inner"], BTreeSet::from(["c".to_string()]));
    assert!(g["b"].is_empty(), "{:?}", g["b"]);
    let cycles = cycles(&g);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(cycles[0].contains(&"c".to_string()) && cycles[0].contains(&"a::inner".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

fn assert_no_cycle(name: &str, g: &Graph) {
    let cycles = cycles(g);
    assert!(cycles.is_empty(), "import cycles in {name}: {cycles:?}");
}

fn graph(rel: &str) -> Graph {
    graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel))
}

/// Reads every module file under `src` (a crate's `src/`).
fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect(src, &mut files);
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let last = parts.last().cloned().unwrap_or_default();
        if last == "main" || last.ends_with("tests") || parts.iter().any(|p| p == "tests") {
            // A binary's root, and unit test files.
            continue;
        }
        if last == "mod" || last == "lib" {
            parts.pop();
        }
        let text = std::fs::read_to_string(f).unwrap();
        modules.insert(parts.join("::"), code_of(&text));
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut g = Graph::new();
    for (m, code) in &modules {
        let mut edges = BTreeSet::new();
        for path in paths(code) {
            let Some(target) = resolve(m, &path, &known) else {
                continue;
            };
            let related = target == *m
                || m.starts_with(&format!("{target}::"))
                || target.starts_with(&format!("{m}::"))
                || (target.is_empty() || m.is_empty());
            if !related {
                edges.insert(target);
            }
        }
        g.insert(m.clone(), edges);
    }
    g
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a module file without comments, string and char literals, and its inline
/// `#[cfg(test)] mod tests { ... }`.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#')) && !ident_byte(b, i) => {
                // A raw string: r"..." or r#"..."#.
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let start = i + 2 + hashes;
                let end = b[start..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| start + p + close.len());
                out.push_str("\"\"");
                i = end;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 3,
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn ident_byte(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// Every path in `code` that starts at `crate`, `super` or `self`, `use` groups expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(p) = code[from..].find(start) {
            let i = from + p;
            from = i + start.len();
            if ident_byte(b, i) || (i > 0 && b[i - 1] == b':') {
                continue;
            }
            let (tree, _) = parse_tree(code, i);
            expand(&tree, &mut Vec::new(), &mut out);
        }
    }
    out
}

/// A path with its groups: `a::b::{c, d::e}`.
#[derive(Debug)]
enum Tree {
    Leaf(Vec<String>),
    Group(Vec<String>, Vec<Tree>),
}

/// Parses the path starting at `i`; the tree, and where it ends.
fn parse_tree(code: &str, mut i: usize) -> (Tree, usize) {
    let b = code.as_bytes();
    let mut segs = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) == Some(&b'{') {
            i += 1;
            let mut items = Vec::new();
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return (Tree::Group(segs, items), i + 1);
                }
                let (t, end) = parse_tree(code, i);
                items.push(t);
                i = end;
                // Skip a rename (`as x`) and anything else up to the next item.
                while i < b.len() && b[i] != b',' && b[i] != b'}' {
                    i += 1;
                }
            }
        }
        let s = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i == s {
            return (Tree::Leaf(segs), i);
        }
        segs.push(code[s..i].to_string());
        if code[i..].starts_with("::") {
            i += 2;
        } else {
            return (Tree::Leaf(segs), i);
        }
    }
}

fn expand(t: &Tree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match t {
        Tree::Leaf(segs) => {
            let mut p = prefix.clone();
            p.extend(segs.iter().filter(|s| *s != "self").cloned());
            out.push(p);
        }
        Tree::Group(segs, items) => {
            let n = prefix.len();
            prefix.extend(segs.iter().cloned());
            for item in items {
                expand(item, prefix, out);
            }
            prefix.truncate(n);
        }
    }
}

/// The deepest known module that `path`, seen from module `current`, names.
fn resolve(current: &str, path: &[String], known: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<&str> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super" | "self") => current.split("::").filter(|s| !s.is_empty()).collect(),
        _ => return None,
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        base.pop();
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
    }
    let mut best = None;
    for k in 0..=rest.len() {
        let mut m: Vec<&str> = base.clone();
        m.extend(rest[..k].iter().map(String::as_str));
        let name = m.join("::");
        if known.contains(&name) {
            best = Some(name);
        }
    }
    best
}

/// Every module `from` reaches through its imports.
fn reachable(g: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = g
        .keys()
        .filter(|m| *m == from || m.starts_with(&format!("{from}::")))
        .cloned()
        .collect();
    while let Some(m) = stack.pop() {
        for t in g.get(&m).into_iter().flatten() {
            if seen.insert(t.clone()) {
                stack.push(t.clone());
            }
        }
    }
    seen
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}
