//! The Prometheus text format (0.0.4), written straight into one `String`:
//! a scrape of 10,000 (VIP, backend) members is some 40,000 lines, which a
//! registry of labelled metric objects rebuilt per scrape made take seconds.

use std::fmt::Write as _;

/// A metric family's `# TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample's value as the format spells it.
pub(super) trait SampleValue {
    fn write_to(&self, out: &mut String);
}

impl SampleValue for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for i64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Rust prints the shortest text that reads back as the same float.
            let _ = write!(out, "{self}");
        }
    }
}

/// The exposition being written.
#[derive(Default)]
pub(super) struct Text {
    out: String,
}

impl Text {
    pub(super) fn with_capacity(bytes: usize) -> Text {
        Text { out: String::with_capacity(bytes) }
    }

    /// `# HELP` and `# TYPE` lines: call once per family, before its samples.
    pub(super) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = write!(self.out, "\n# TYPE {name} {}\n", kind.name());
    }

    /// `name{label="value",...} value`; labels in the order given (the tests
    /// and `prometheus`'s encoder use name order).
    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
    }

    /// Text already in the format (another encoder's output).
    pub(super) fn push_encoded(&mut self, text: &str) {
        self.out.push_str(text);
    }

    pub(super) fn finish(self) -> String {
        self.out
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escapes_as_the_format_says() {
        let mut t = Text::default();
        t.family("lb_x_total", Kind::Counter, "A \\ help\nline.");
        t.sample("lb_x_total", &[("backend", "198.51.100.11"), ("vip", "a \"q\" \\ b\nc")], 7u64);
        t.family("lb_y", Kind::Gauge, "Y.");
        t.sample("lb_y", &[], 0.25f64);
        t.sample("lb_y", &[], -3i64);
        t.sample("lb_y", &[], f64::INFINITY);
        t.sample("lb_y", &[], 1.0f64);
        assert_eq!(
            t.finish(),
            "# HELP lb_x_total A \\\\ help\\nline.\n# TYPE lb_x_total counter\n\
             lb_x_total{backend=\"198.51.100.11\",vip=\"a \\\"q\\\" \\\\ b\\nc\"} 7\n\
             # HELP lb_y Y.\n# TYPE lb_y gauge\nlb_y 0.25\nlb_y -3\nlb_y +Inf\nlb_y 1\n"
        );
    }
}
