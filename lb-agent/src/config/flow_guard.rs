//! `lb.new_flow_guard`: how many new flows per second each CPU records in
//! the flow table before it forwards further new flows unrecorded (see
//! `lb_common::flow_guard`), or `"off"`. Written to a map on every start
//! and reload, so a change needs no new program.

use lb_common::flow_guard::{DEFAULT_NEW_FLOWS_PER_CPU_PER_SECOND, MAX_NEW_FLOWS_PER_CPU_PER_SECOND};
use toml::Value;

use super::Validator;

const FIELD: &str = "lb.new_flow_guard";
/// The word that turns the guard off.
pub const GUARD_OFF_WORD: &str = "off";

impl Validator {
    /// `Some(Some(rate))`, `Some(None)` for off, `None` after a problem.
    /// Read as any TOML value (a number or a word) so that every wrong one
    /// gets this message, not serde's.
    pub(super) fn new_flow_guard(&mut self, raw: Option<Value>) -> Option<Option<u32>> {
        let range = format!("1..={MAX_NEW_FLOWS_PER_CPU_PER_SECOND} new flows per second per CPU");
        match raw {
            None => Some(Some(DEFAULT_NEW_FLOWS_PER_CPU_PER_SECOND)),
            Some(Value::String(w)) if w == GUARD_OFF_WORD => Some(None),
            Some(Value::Integer(n)) if n < 1 || n > i64::from(MAX_NEW_FLOWS_PER_CPU_PER_SECOND) => {
                self.add(FIELD, format!("{n} is out of range {range}; \"{GUARD_OFF_WORD}\" turns the guard off"));
                None
            }
            Some(Value::Integer(n)) => Some(Some(n as u32)),
            Some(other) => {
                self.add(FIELD, format!("{other} is neither a rate ({range}) nor \"{GUARD_OFF_WORD}\""));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::test_config::{TestConfig, TestVip};

    fn with_guard(value: &str) -> String {
        let text = TestConfig::new().vip(TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11"])).to_toml();
        text.replace("interface = \"eth0\"", &format!("interface = \"eth0\"\nnew_flow_guard = {value}"))
    }

    #[test]
    fn defaults_to_katrans_rate() {
        let text = TestConfig::new().vip(TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11"])).to_toml();
        assert_eq!(parse(&text, "lb.toml").unwrap().lb.new_flow_guard, Some(125_000));
    }

    #[test]
    fn takes_a_rate_or_off() {
        assert_eq!(parse(&with_guard("5000"), "lb.toml").unwrap().lb.new_flow_guard, Some(5000));
        assert_eq!(parse(&with_guard("1"), "lb.toml").unwrap().lb.new_flow_guard, Some(1));
        assert_eq!(parse(&with_guard("\"off\""), "lb.toml").unwrap().lb.new_flow_guard, None);
    }

    #[test]
    fn a_bad_value_names_file_field_and_value() {
        for (bad, needle) in [("0", "out of range"), ("-5", "out of range"), ("100000001", "out of range"), ("\"on\"", "neither a rate"), ("1.5", "neither a rate")] {
            let e = parse(&with_guard(bad), "lb.toml").expect_err(bad);
            assert_eq!(e.problems.len(), 1, "{e}");
            let shown = e.to_string();
            let value = bad.trim_matches('"');
            assert!(shown.contains("lb.toml: lb.new_flow_guard: ") && shown.contains(value) && shown.contains(needle), "{shown}");
        }
    }
}
