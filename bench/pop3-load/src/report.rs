//! The result of a scenario: one JSON line on stdout (hand-formatted; no serde_json needed
//! for flat objects of strings and numbers) and a short human summary on stderr.

use std::fmt::Write as _;
use std::time::Duration;

/// A JSON value of the flat kind reports use.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(i64),
    Num(f64),
    Bool(bool),
    Null,
}

/// Ordered fields of one report.
#[derive(Debug, Default)]
pub struct Report {
    fields: Vec<(String, Value)>,
    summary: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str) -> Self {
        let mut r = Report::default();
        r.str("scenario", scenario);
        r
    }

    pub fn str(&mut self, key: &str, v: impl Into<String>) -> &mut Self {
        self.fields.push((key.into(), Value::Str(v.into())));
        self
    }

    pub fn int(&mut self, key: &str, v: impl TryInto<i64>) -> &mut Self {
        let v = v.try_into().map(Value::Int).unwrap_or(Value::Null);
        self.fields.push((key.into(), v));
        self
    }

    pub fn num(&mut self, key: &str, v: f64) -> &mut Self {
        self.fields.push((key.into(), if v.is_finite() { Value::Num(v) } else { Value::Null }));
        self
    }

    pub fn opt_num(&mut self, key: &str, v: Option<f64>) -> &mut Self {
        match v {
            Some(v) => self.num(key, v),
            None => {
                self.fields.push((key.into(), Value::Null));
                self
            }
        }
    }

    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.fields.push((key.into(), Value::Bool(v)));
        self
    }

    /// A line of the human summary.
    pub fn say(&mut self, line: impl Into<String>) -> &mut Self {
        self.summary.push(line.into());
        self
    }

    /// The JSON object on one line.
    pub fn json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            escape(&mut out, k);
            out.push(':');
            match v {
                Value::Str(s) => escape(&mut out, s),
                Value::Int(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Num(x) => {
                    let _ = write!(out, "{}", (x * 1000.0).round() / 1000.0);
                }
                Value::Bool(b) => {
                    let _ = write!(out, "{b}");
                }
                Value::Null => out.push_str("null"),
            }
        }
        out.push('}');
        out
    }

    /// JSON on stdout (with the client's own CPU time added), the summary on stderr.
    pub fn print(&mut self) {
        self.opt_num("client_cpu_seconds", crate::procfs::self_cpu_secs());
        println!("{}", self.json());
        for line in &self.summary {
            eprintln!("{line}");
        }
    }
}

fn escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// The `p`-th percentile (0–100) in ms, nearest-rank; None when empty.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil().max(1.0) as usize;
        Some(self.0[rank.min(self.0.len()) - 1].as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_escaped_and_flat() {
        let mut r = Report::new("x");
        r.str("s", "a\"b\\c\n").int("n", 3u64).num("f", 1.23456).bool("ok", true).num("nan", f64::NAN);
        assert_eq!(r.json(), r#"{"scenario":"x","s":"a\"b\\c\n","n":3,"f":1.235,"ok":true,"nan":null}"#);
    }

    #[test]
    fn percentiles() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile_ms(50.0), None);
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), Some(50.0));
        assert_eq!(l.percentile_ms(99.0), Some(99.0));
        assert_eq!(l.percentile_ms(100.0), Some(100.0));
    }
}
