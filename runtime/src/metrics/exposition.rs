//! Prometheus' text exposition format (version 0.0.4): families of samples, each
//! family once with its `# HELP` and `# TYPE`, its samples together.

use std::fmt::Write;

use super::Histogram;

/// The `Content-Type` of a page in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family being built.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    lines: String,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            lines: String::new(),
        }
    }

    /// A gauge's or counter's sample.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Family {
        self.line("", labels, None, value);
        self
    }

    /// A histogram's samples: its cumulative buckets, `_sum` and `_count`.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) -> &mut Family {
        for (bound, count) in h.cumulative() {
            self.line("_bucket", labels, Some(bound), count as f64);
        }
        self.line("_sum", labels, None, h.sum);
        self.line("_count", labels, None, h.count as f64);
        self
    }

    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<f64>, value: f64) {
        let mut pairs: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
            .collect();
        if let Some(le) = le {
            pairs.push(format!("le=\"{}\"", format_value(le)));
        }
        let labels = if pairs.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", pairs.join(","))
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            self.lines,
            "{}{suffix}{labels} {}",
            self.name,
            format_value(value)
        );
    }

    /// The family as text; nothing when it has no samples (a family without samples
    /// tells a scraper nothing).
    pub fn render(&self, out: &mut String) {
        if self.lines.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.name());
        out.push_str(&self.lines);
    }
}

/// Backslash, double quote and newline escaped, as the format wants them.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Integers without a fraction, `+Inf`/`-Inf`/`NaN` as the format spells them.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_as_prometheus_reads_them() {
        let mut g = Family::new("hull_sandboxes", Kind::Gauge, "Sandboxes on this node.");
        g.sample(&[("status", "running")], 2.0)
            .sample(&[("status", "or\"ph\\an\n")], 0.5);
        let mut h = Family::new("hull_x_seconds", Kind::Histogram, "X.");
        let mut hist = Histogram::new(&[0.5, 1.0]);
        hist.observe(0.25);
        hist.observe(3.0);
        h.histogram(&[("rpc", "check")], &hist);
        let empty = Family::new("hull_none", Kind::Counter, "Nothing.");
        let mut out = String::new();
        for f in [&g, &h, &empty] {
            f.render(&mut out);
        }
        assert_eq!(
            out,
            "# HELP hull_sandboxes Sandboxes on this node.\n\
             # TYPE hull_sandboxes gauge\n\
             hull_sandboxes{status=\"running\"} 2\n\
             hull_sandboxes{status=\"or\\\"ph\\\\an\\n\"} 0.5\n\
             # HELP hull_x_seconds X.\n\
             # TYPE hull_x_seconds histogram\n\
             hull_x_seconds_bucket{rpc=\"check\",le=\"0.5\"} 1\n\
             hull_x_seconds_bucket{rpc=\"check\",le=\"1\"} 1\n\
             hull_x_seconds_bucket{rpc=\"check\",le=\"+Inf\"} 2\n\
             hull_x_seconds_sum{rpc=\"check\"} 3.25\n\
             hull_x_seconds_count{rpc=\"check\"} 2\n"
        );
    }

    #[test]
    fn special_values() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e-4), "0.0001");
        assert_eq!(format_value(123456789.0), "123456789");
    }
}
