//! The grid of a parameter sweep, pure: `--vary KEY=V1,V2` arguments or a scenario's `[sweep]`
//! table → varied keys with their values → the cartesian product of points, each a list of
//! `--set` strings. The first varied key varies slowest (like nested loops), so point indices
//! are stable for a given grid and a resumed sweep finds its finished points again.

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

use crate::scenario::Override;

/// One varied key and its values, as the text after `KEY=`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vary {
    pub key: String,
    pub values: Vec<String>,
}

/// One grid point.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    pub index: usize,
    /// `KEY=VALUE`, one per varied key, in `--vary` order.
    pub overrides: Vec<String>,
    pub values: BTreeMap<String, String>,
    /// Numbers as written, durations in seconds, `None` otherwise.
    pub x: BTreeMap<String, Option<f64>>,
}

/// What is wrong with a grid (all exit 2).
#[derive(Debug, Error, PartialEq)]
pub enum GridError {
    #[error("--vary {0:?}: expected KEY=V1,V2,..., e.g. population.0.count=500,1000,2000")]
    Syntax(String),
    #[error("--vary {key}: no values")]
    NoValues { key: String },
    #[error("--vary {key}: the value {value:?} is given twice")]
    DuplicateValue { key: String, value: String },
    #[error("--vary {key} is given twice")]
    DuplicateKey { key: String },
    #[error("nothing to vary: give --vary KEY=V1,V2,... or a [sweep] table with [[sweep.vary]]")]
    Empty,
    #[error("[sweep] table: {0}")]
    Table(String),
    #[error("--repeat must be at least 1")]
    NoRepeats,
}

/// Parses `KEY=V1,V2,...`. Commas inside quotes, brackets or braces do not split values, so
/// `arrival={ kind = "burst", at = "1s" },{ kind = "constant", rate = 50.0 }` is two values.
pub fn parse_vary(arg: &str) -> Result<Vary, GridError> {
    let (key, values) = arg
        .split_once('=')
        .ok_or_else(|| GridError::Syntax(arg.to_owned()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(GridError::Syntax(arg.to_owned()));
    }
    let values = split_values(values);
    if values.is_empty() {
        return Err(GridError::NoValues {
            key: key.to_owned(),
        });
    }
    Ok(Vary {
        key: key.to_owned(),
        values,
    })
}

/// Splits on commas outside quotes and brackets; trims; drops empty pieces.
fn split_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quote, mut piece) = (0i32, None::<char>, String::new());
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth <= 0 => {
                out.push(std::mem::take(&mut piece));
                continue;
            }
            _ => {}
        }
        piece.push(c);
    }
    out.push(piece);
    out.into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Checks a whole grid: keys and values unique, something to vary.
pub fn check(vary: &[Vary]) -> Result<(), GridError> {
    if vary.is_empty() {
        return Err(GridError::Empty);
    }
    for (i, v) in vary.iter().enumerate() {
        if vary[..i].iter().any(|o| o.key == v.key) {
            return Err(GridError::DuplicateKey { key: v.key.clone() });
        }
        for (j, value) in v.values.iter().enumerate() {
            if v.values[..j].contains(value) {
                return Err(GridError::DuplicateValue {
                    key: v.key.clone(),
                    value: value.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The cartesian product, first key slowest.
pub fn cartesian(vary: &[Vary]) -> Vec<GridPoint> {
    let total: usize = vary.iter().map(|v| v.values.len()).product();
    (0..total)
        .map(|index| {
            let mut rest = index;
            let mut chosen = vec![""; vary.len()];
            for (slot, v) in vary.iter().enumerate().rev() {
                chosen[slot] = &v.values[rest % v.values.len()];
                rest /= v.values.len();
            }
            let pairs = vary.iter().zip(chosen);
            GridPoint {
                index,
                overrides: pairs
                    .clone()
                    .map(|(v, value)| format!("{}={value}", v.key))
                    .collect(),
                values: pairs
                    .clone()
                    .map(|(v, value)| (v.key.clone(), value.to_owned()))
                    .collect(),
                x: pairs
                    .map(|(v, value)| (v.key.clone(), numeric(value)))
                    .collect(),
            }
        })
        .collect()
}

/// A value as a number for the charts' x axis: TOML numbers as they are, durations (`30s`,
/// `"1m 30s"`) in seconds; `None` for anything else.
pub fn numeric(value: &str) -> Option<f64> {
    let text = value.trim().trim_matches('"');
    if let Ok(n) = text.replace('_', "").parse::<f64>() {
        return n.is_finite().then_some(n);
    }
    humantime::parse_duration(text)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// A scenario's `[sweep]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepTable {
    /// Repeats per point; `--repeat` overrides it.
    #[serde(default)]
    pub repeat: Option<usize>,
    /// `[[sweep.vary]]`, in grid order; any `--vary` replaces them all.
    #[serde(default)]
    pub vary: Vec<VaryTable>,
}

/// One `[[sweep.vary]]`: `key = "population.0.count"`, `values = [250, 500]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaryTable {
    pub key: String,
    pub values: Vec<toml::Value>,
}

impl SweepTable {
    /// Reads the raw `[sweep]` table of a scenario file.
    pub fn from_table(table: &toml::Table) -> Result<SweepTable, GridError> {
        toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| GridError::Table(e.to_string().trim_end().to_owned()))
    }

    /// The table's grid as `--vary` would give it.
    pub fn vary(&self) -> Vec<Vary> {
        self.vary
            .iter()
            .map(|v| Vary {
                key: v.key.clone(),
                values: v.values.iter().map(|x| value_text(&v.key, x)).collect(),
            })
            .collect()
    }
}

/// A TOML value as the text after `KEY=` that `--set` reads back as the same value: a string
/// bare when it reads back as itself (`push`, `30s`), quoted otherwise; anything else in TOML.
fn value_text(key: &str, value: &toml::Value) -> String {
    if let toml::Value::String(s) = value {
        let bare = Override::parse(&format!("{key}={s}")).ok();
        if bare.is_some_and(|o| o.value == *value) {
            return s.clone();
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_values() {
        let v = parse_vary("population.0.count=250, 500,1000").unwrap();
        assert_eq!(v.key, "population.0.count");
        assert_eq!(v.values, ["250", "500", "1000"]);
        assert!(matches!(parse_vary("nokey"), Err(GridError::Syntax(_))));
        assert!(matches!(parse_vary("a..b=1"), Err(GridError::Syntax(_))));
        assert!(matches!(parse_vary("a=,"), Err(GridError::NoValues { .. })));
    }

    #[test]
    fn commas_inside_tables_and_quotes_do_not_split() {
        let v = parse_vary(
            "population.0.arrival={ kind = \"burst\", at = \"1s\" },{ kind = \"constant\", rate = 5.0 },\"a,b\"",
        )
        .unwrap();
        assert_eq!(v.values.len(), 3, "{:?}", v.values);
        assert_eq!(v.values[2], "\"a,b\"");
    }

    #[test]
    fn the_product_varies_the_last_key_fastest() {
        let grid = cartesian(&[parse_vary("a=1,2").unwrap(), parse_vary("b=x,y,z").unwrap()]);
        assert_eq!(grid.len(), 6);
        assert_eq!(grid[0].overrides, ["a=1", "b=x"]);
        assert_eq!(grid[1].overrides, ["a=1", "b=y"]);
        assert_eq!(grid[3].overrides, ["a=2", "b=x"]);
        assert_eq!(grid[5].index, 5);
        assert_eq!(grid[4].x["a"], Some(2.0));
        assert_eq!(grid[4].x["b"], None);
    }

    #[test]
    fn numbers_and_durations_are_numeric() {
        assert_eq!(numeric("250"), Some(250.0));
        assert_eq!(numeric("0.5"), Some(0.5));
        assert_eq!(numeric("1_000"), Some(1000.0));
        assert_eq!(numeric("30s"), Some(30.0));
        assert_eq!(numeric("\"2m\""), Some(120.0));
        assert_eq!(numeric("150ms"), Some(0.15));
        assert_eq!(numeric("preload"), None);
    }

    #[test]
    fn duplicates_and_empty_grids_are_refused() {
        assert_eq!(check(&[]), Err(GridError::Empty));
        let twice = [parse_vary("a=1").unwrap(), parse_vary("a=2").unwrap()];
        assert!(matches!(check(&twice), Err(GridError::DuplicateKey { .. })));
        let same = [parse_vary("a=1,1").unwrap()];
        assert!(matches!(
            check(&same),
            Err(GridError::DuplicateValue { .. })
        ));
    }

    #[test]
    fn a_sweep_table_reads_like_vary() {
        let table: toml::Table = toml::from_str(
            "repeat = 2\n[[vary]]\nkey = \"daemon.evict_after\"\nvalues = [\"30s\", \"2m\"]\n\
             [[vary]]\nkey = \"population.0.count\"\nvalues = [100, 200]\n\
             [[vary]]\nkey = \"daemon.boot\"\nvalues = [\"jit\", \"5\"]\n",
        )
        .unwrap();
        let t = SweepTable::from_table(&table).unwrap();
        assert_eq!(t.repeat, Some(2));
        let vary = t.vary();
        assert_eq!(vary[0].values, ["30s", "2m"]);
        assert_eq!(vary[1].values, ["100", "200"]);
        // "5" bare would read back as an integer: it stays a string by quoting.
        assert_eq!(vary[2].values, ["jit", "\"5\""]);
        let bad: toml::Table = toml::from_str("repeats = 2").unwrap();
        assert!(matches!(
            SweepTable::from_table(&bad),
            Err(GridError::Table(_))
        ));
    }
}
