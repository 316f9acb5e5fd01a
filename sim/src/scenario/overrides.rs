//! `--set a.b=c` overrides, applied to the raw TOML tree before it is
//! deserialized, so an override is validated exactly like the file itself.

use thiserror::Error;
use toml::Value;

/// One parsed `--set KEY=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Dotted path; a numeric segment indexes an array (`population.0.count`).
    pub path: Vec<String>,
    pub value: Value,
}

#[derive(Debug, Error, PartialEq)]
pub enum OverrideError {
    #[error("--set {0:?}: expected KEY=VALUE, e.g. daemon.mode=push")]
    Syntax(String),
    #[error("--set {key}: `{segment}` is not a table or array in the scenario")]
    NotAContainer { key: String, segment: String },
    #[error("--set {key}: array index {index} out of range (length {len})")]
    IndexOutOfRange {
        key: String,
        index: usize,
        len: usize,
    },
}

impl Override {
    /// Parses `a.b=c`. The value is read as a TOML value (`5`, `true`, `"5s"`,
    /// `{ kind = "burst", at = "1s" }`) and otherwise taken as a plain string (`push`, `5s`).
    pub fn parse(arg: &str) -> Result<Self, OverrideError> {
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| OverrideError::Syntax(arg.to_owned()))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(OverrideError::Syntax(arg.to_owned()));
        }
        let raw = raw.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.to_owned()));
        Ok(Self {
            path: key.split('.').map(str::to_owned).collect(),
            value,
        })
    }

    pub fn key(&self) -> String {
        self.path.join(".")
    }

    /// Sets the value, creating missing tables on the way.
    pub fn apply(&self, root: &mut Value) -> Result<(), OverrideError> {
        let mut node = root;
        for (depth, segment) in self.path.iter().enumerate() {
            let last = depth + 1 == self.path.len();
            node = match node {
                Value::Table(table) => {
                    if last {
                        table.insert(segment.clone(), self.value.clone());
                        return Ok(());
                    }
                    table
                        .entry(segment.clone())
                        .or_insert_with(|| Value::Table(toml::Table::new()))
                }
                Value::Array(items) => {
                    let index: usize =
                        segment.parse().map_err(|_| OverrideError::NotAContainer {
                            key: self.key(),
                            segment: segment.clone(),
                        })?;
                    let len = items.len();
                    let slot = items.get_mut(index).ok_or(OverrideError::IndexOutOfRange {
                        key: self.key(),
                        index,
                        len,
                    })?;
                    if last {
                        *slot = self.value.clone();
                        return Ok(());
                    }
                    slot
                }
                _ => {
                    return Err(OverrideError::NotAContainer {
                        key: self.key(),
                        segment: self.path[depth.saturating_sub(1)].clone(),
                    })
                }
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(s: &str) -> Value {
        Value::Table(toml::from_str(s).unwrap())
    }

    #[test]
    fn bare_words_become_strings_and_toml_values_stay_typed() {
        assert_eq!(
            Override::parse("daemon.mode=push").unwrap().value,
            Value::String("push".into())
        );
        assert_eq!(Override::parse("seed=7").unwrap().value, Value::Integer(7));
        assert_eq!(
            Override::parse("x=\"5s\"").unwrap().value,
            Value::String("5s".into())
        );
        assert_eq!(
            Override::parse("x=5s").unwrap().value,
            Value::String("5s".into())
        );
    }

    #[test]
    fn rejects_missing_equals_and_empty_segments() {
        assert!(Override::parse("daemon.mode").is_err());
        assert!(Override::parse("daemon..mode=x").is_err());
        assert!(Override::parse("=x").is_err());
    }

    #[test]
    fn sets_nested_keys_creating_tables() {
        let mut v = tree("name = \"a\"");
        Override::parse("daemon.mode=push")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        assert_eq!(v["daemon"]["mode"].as_str(), Some("push"));
    }

    #[test]
    fn indexes_arrays_of_tables() {
        let mut v = tree("[[population]]\ncount = 1\n[[population]]\ncount = 2");
        Override::parse("population.1.count=9")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        assert_eq!(v["population"][1]["count"].as_integer(), Some(9));
        let err = Override::parse("population.5.count=9")
            .unwrap()
            .apply(&mut v);
        assert!(matches!(err, Err(OverrideError::IndexOutOfRange { .. })));
    }

    #[test]
    fn refuses_to_descend_into_scalars() {
        let mut v = tree("name = \"a\"");
        assert!(Override::parse("name.x=1").unwrap().apply(&mut v).is_err());
    }
}
