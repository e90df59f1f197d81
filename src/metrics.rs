//! Prometheus text exposition (format 0.0.4), written by hand: a few families per runtime do
//! not justify a metrics library.

use std::fmt::Write as _;

#[derive(Debug, Default)]
pub(crate) struct MetricsText {
    out: String,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

impl MetricsText {
    /// Starts a metric family: its HELP and TYPE lines.
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the family just started.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_in_the_text_format() {
        let mut m = MetricsText::default();
        m.family("ri_bytes_total", Kind::Counter, "Bytes.");
        m.sample("ri_bytes_total", &[("edge", "a\"b"), ("port", "443")], 12);
        m.family("ri_up", Kind::Gauge, "Up.");
        m.sample("ri_up", &[], 1);
        assert_eq!(
            m.finish(),
            "# HELP ri_bytes_total Bytes.\n# TYPE ri_bytes_total counter\n\
             ri_bytes_total{edge=\"a\\\"b\",port=\"443\"} 12\n\
             # HELP ri_up Up.\n# TYPE ri_up gauge\nri_up 1\n"
        );
    }
}
