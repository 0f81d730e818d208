//! One command-line flag per model and training option, derived from the serde form of the configs so the
//! flags can never drift from the options: `--dispersion gene-batch`, `--n-latent 10`, `--lr 3e-4`,
//! `--restore-best true`. A flag overrides the preset and the `--config` file.

use clap::{Arg, ArgMatches, Command};
use serde_json::{Map, Value};

/// The options of one config struct as (flag name, serde key, default shown in --help).
pub struct OptionTable {
    pub section: &'static str,
    pub keys: Vec<(String, Value)>,
}

impl OptionTable {
    pub fn from_default<T: serde::Serialize>(section: &'static str, default: &T) -> Self {
        let v = serde_json::to_value(default).expect("config serialises");
        let keys = match v {
            Value::Object(m) => m.into_iter().collect(),
            _ => Vec::new(),
        };
        OptionTable { section, keys }
    }

    pub fn flag(key: &str) -> String {
        key.replace('_', "-")
    }

    pub fn augment(&self, mut cmd: Command) -> Command {
        for (key, default) in &self.keys {
            let shown = match default {
                Value::Null => "none".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name: &'static str = Box::leak(Self::flag(key).into_boxed_str());
            let help = match super::option_help::lookup(key) {
                Some(h) => h.render(&shown),
                None => format!("`{key}` [default: {shown}]"),
            };
            let help: &'static str = Box::leak(help.into_boxed_str());
            cmd = cmd.arg(Arg::new(name).long(name).value_name("VALUE").allow_negative_numbers(true).help(help).help_heading(self.section));
        }
        cmd
    }

    /// Merge the flags given on the command line into `target` (the serde object of the config).
    pub fn apply(&self, m: &ArgMatches, target: &mut Value) -> anyhow::Result<()> {
        let obj: &mut Map<String, Value> = target.as_object_mut().ok_or_else(|| anyhow::anyhow!("config is not an object"))?;
        for (key, default) in &self.keys {
            if let Some(raw) = m.get_one::<String>(&Self::flag(key)) {
                // (JSON has no NaN or infinity: they would reach the option as null)
                if raw.parse::<f64>().is_ok_and(|f| !f.is_finite()) && !default.is_string() {
                    anyhow::bail!("--{} {raw}: not a finite number", Self::flag(key));
                }
                obj.insert(key.clone(), parse_value(raw, default));
            }
        }
        Ok(())
    }
}

/// How a flag (and a `--config` string, TOML having no null) spells an unset optional value.
pub(super) fn is_none_word(raw: &str) -> bool {
    raw.eq_ignore_ascii_case("none") || raw.eq_ignore_ascii_case("null")
}

/// Interpret a flag value with the type of the default: numbers and booleans stay typed, "none"/"null"
/// clears an optional value, everything else is a string (enums are spelled as in the original).
pub(super) fn parse_value(raw: &str, default: &Value) -> Value {
    let lower = raw.to_ascii_lowercase();
    if is_none_word(raw) {
        if default.is_null() || !default.is_string() {
            return Value::Null;
        }
    }
    if let Ok(b) = lower.parse::<bool>() {
        if default.is_boolean() || default.is_null() {
            return Value::Bool(b);
        }
    }
    if let Ok(i) = raw.parse::<i64>() {
        if !default.is_string() {
            return Value::from(i);
        }
    }
    if let Ok(f) = raw.parse::<f64>() {
        if !default.is_string() {
            return Value::from(f);
        }
    }
    Value::String(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_the_type_of_the_default() {
        assert_eq!(parse_value("3", &Value::from(1)), Value::from(3));
        assert_eq!(parse_value("1e-3", &Value::from(0.1)), Value::from(1e-3));
        assert_eq!(parse_value("true", &Value::Bool(false)), Value::Bool(true));
        assert_eq!(parse_value("none", &Value::from(5)), Value::Null);
        assert_eq!(parse_value("7", &Value::Null), Value::from(7));
        assert_eq!(parse_value("gene-batch", &Value::from("gene")), Value::from("gene-batch"));
        assert_eq!(parse_value("1", &Value::from("x")), Value::from("1"));
    }
}
