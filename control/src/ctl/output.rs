//! How `ringmesh ctl` prints: aligned columns for people, JSON for scripts, colour only on a
//! terminal (and never with `NO_COLOR`).

use std::io::IsTerminal as _;

use serde_json::Value;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text.
    Text,
    /// One JSON document.
    Json,
}

impl Format {
    pub(super) fn parse(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("--output: `{s}`: text or json")),
        }
    }
}

/// Where a command prints.
pub(super) struct Out {
    pub format: Format,
    colour: bool,
}

impl Out {
    pub fn new(format: Format) -> Out {
        Out {
            format,
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// `text` in red (bad) or green (good), on a terminal.
    pub fn mark(&self, good: bool, text: &str) -> String {
        if !self.colour {
            return text.to_string();
        }
        let code = if good { 32 } else { 31 };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// Prints `rows` under `header`, each column as wide as its widest cell.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) {
        print!("{}", table(header, rows, visible_width));
    }

    pub fn json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

/// The columns laid out; `width` measures a cell as it shows (colour codes take no room).
fn table(header: &[&str], rows: &[Vec<String>], width: impl Fn(&str) -> usize) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(cell));
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(width(cell)) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Characters that show, colour codes left out.
fn visible_width(s: &str) -> usize {
    let mut n = 0;
    let mut escape = false;
    for c in s.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// `90s`, `12m`, `5h`, `3d`: a duration as an operator reads it.
pub(super) fn age(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0}m", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.0}h", s / 3600.0)
    } else {
        format!("{:.0}d", s / 86400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_colour_takes_no_room() {
        let rows = vec![
            vec!["edge-1".to_string(), "\x1b[32myes\x1b[0m".to_string()],
            vec!["a-much-longer-node".to_string(), "no".to_string()],
        ];
        let t = table(&["NODE", "SYNC"], &rows, visible_width);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NODE                SYNC");
        assert_eq!(lines[2], "a-much-longer-node  no");
        assert_eq!(visible_width(&rows[0][1]), 3);
        assert_eq!(age(59.4), "59s");
        assert_eq!(age(3600.0), "60m");
        assert_eq!(age(90000.0), "25h");
        assert_eq!(age(400000.0), "5d");
        assert!(Format::parse("yaml").is_err());
    }
}
