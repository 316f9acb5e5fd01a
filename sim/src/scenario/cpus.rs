//! `[lab] cpus`: which CPUs the gateway (jitwgd, wireguard-go) and the driver (fleet, control
//! plane, NATS) may use, so a latency can be pinned on one side and not on the load generator
//! sharing its cores. Pure: CPU-list syntax (`"0-1,3"`, as the kernel writes it), the default
//! split into halves, and the check against the CPUs a machine has (passed in).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::FieldError;

/// A set of CPU numbers, written and read in the kernel's list syntax (`0-3,8,10-11`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(BTreeSet<u32>);

/// The largest CPU number accepted in a list (the kernel's own `NR_CPUS` ceiling is 8192).
const MAX_CPU: u32 = 8191;

impl CpuList {
    /// Parses `"0-1,3"`; whitespace around items is allowed, an empty list is not.
    pub fn parse(text: &str) -> Result<CpuList, String> {
        let mut set = BTreeSet::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("`{text}` is not a CPU list (e.g. \"0-1,3\")"));
            }
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (cpu_number(lo, text)?, cpu_number(hi, text)?),
                None => {
                    let n = cpu_number(item, text)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(format!("range `{item}` in `{text}` runs backwards"));
            }
            set.extend(lo..=hi);
        }
        Ok(CpuList(set))
    }

    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> CpuList {
        CpuList(cpus.into_iter().collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// The CPUs in `self` that `available` lacks.
    pub fn missing_from(&self, available: &CpuList) -> CpuList {
        CpuList(self.0.difference(&available.0).copied().collect())
    }

    /// Whether the two lists share a CPU.
    pub fn overlaps(&self, other: &CpuList) -> bool {
        !self.0.is_disjoint(&other.0)
    }
}

fn cpu_number(s: &str, whole: &str) -> Result<u32, String> {
    let s = s.trim();
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` in `{whole}` is not a CPU number"))?;
    if n > MAX_CPU {
        return Err(format!("CPU {n} in `{whole}` is beyond {MAX_CPU}"));
    }
    Ok(n)
}

/// Kernel list syntax, ranges collapsed: `{0,1,2,5}` → `0-2,5`.
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(lo) = iter.next() {
            let mut hi = lo;
            while iter.peek() == Some(&(hi + 1)) {
                hi += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// `[lab] cpus` as written: `"auto"` (the default), `"off"`, or `{ gateway = "0", driver = "1" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CpusFile {
    Keyword(String),
    Split { gateway: String, driver: String },
}

impl Default for CpusFile {
    fn default() -> Self {
        CpusFile::Keyword("auto".into())
    }
}

/// The resolved choice; which CPUs exist is only known on the machine that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CpuChoice {
    /// Two halves of the CPUs the driver may use, when there are at least two.
    #[default]
    Auto,
    /// No confinement: gateway and driver share every CPU (the behaviour before the split).
    Off,
    /// Exactly these lists.
    Split { gateway: CpuList, driver: CpuList },
}

/// Gateway and driver CPUs of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSplit {
    pub gateway: CpuList,
    pub driver: CpuList,
}

/// What a run does about CPUs on this machine: a split, or none with the reason when the
/// scenario asked for one it could not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    pub split: Option<CpuSplit>,
    /// Said in the results when the default could not split (one CPU).
    pub warning: Option<String>,
}

/// The key `[lab] cpus` is known by in errors.
pub const CPUS_KEY: &str = "lab.cpus";

impl CpuChoice {
    /// Stage one → two, syntax only.
    pub fn from_file(file: &CpusFile) -> Result<CpuChoice, FieldError> {
        let invalid = |key: &str, reason: String| FieldError {
            key: key.to_string(),
            reason,
        };
        match file {
            CpusFile::Keyword(k) if k == "auto" => Ok(CpuChoice::Auto),
            CpusFile::Keyword(k) if k == "off" => Ok(CpuChoice::Off),
            CpusFile::Keyword(k) => Err(invalid(
                CPUS_KEY,
                format!("is `{k}`: use \"auto\", \"off\" or {{ gateway = \"0\", driver = \"1\" }}"),
            )),
            CpusFile::Split { gateway, driver } => Ok(CpuChoice::Split {
                gateway: CpuList::parse(gateway)
                    .map_err(|r| invalid(&format!("{CPUS_KEY}.gateway"), r))?,
                driver: CpuList::parse(driver)
                    .map_err(|r| invalid(&format!("{CPUS_KEY}.driver"), r))?,
            }),
        }
    }

    /// The split on a machine whose driver may use `available`. A listed CPU that is not
    /// available is an error naming the key; the default splits into halves (gateway the
    /// lower CPUs, the driver the rest, which gets the odd one: it carries the fleet, the
    /// control plane and NATS) and is off, with a warning, on one CPU.
    pub fn plan(&self, available: &CpuList) -> Result<CpuPlan, FieldError> {
        match self {
            CpuChoice::Off => Ok(CpuPlan {
                split: None,
                warning: None,
            }),
            CpuChoice::Auto if available.len() < 2 => Ok(CpuPlan {
                split: None,
                warning: Some(format!(
                    "CPU split off: the driver may use only CPU {available}, so the gateway and the load generator share it"
                )),
            }),
            CpuChoice::Auto => {
                let half = available.len() / 2;
                Ok(CpuPlan {
                    split: Some(CpuSplit {
                        gateway: CpuList::from_cpus(available.iter().take(half)),
                        driver: CpuList::from_cpus(available.iter().skip(half)),
                    }),
                    warning: None,
                })
            }
            CpuChoice::Split { gateway, driver } => {
                for (side, list) in [("gateway", gateway), ("driver", driver)] {
                    let missing = list.missing_from(available);
                    if !missing.is_empty() {
                        return Err(FieldError {
                            key: format!("{CPUS_KEY}.{side}"),
                            reason: format!(
                                "names CPU {missing}, which this machine does not offer (available: {available})"
                            ),
                        });
                    }
                }
                let warning = gateway.overlaps(driver).then(|| {
                    format!("CPU split overlaps: gateway {gateway} and driver {driver} share CPUs")
                });
                Ok(CpuPlan {
                    split: Some(CpuSplit {
                        gateway: gateway.clone(),
                        driver: driver.clone(),
                    }),
                    warning,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> CpuList {
        CpuList::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_kernel_list_syntax() {
        for (text, cpus, printed) in [
            ("0", vec![0], "0"),
            ("0-1,3", vec![0, 1, 3], "0-1,3"),
            (" 3 , 0-1 ", vec![0, 1, 3], "0-1,3"),
            ("5,4,6", vec![4, 5, 6], "4-6"),
            ("2-2", vec![2], "2"),
        ] {
            let l = list(text);
            assert_eq!(l.iter().collect::<Vec<_>>(), cpus, "{text}");
            assert_eq!(l.to_string(), printed, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in ["", ",", "0,", "a", "1-", "-1", "3-1", "0-1-2", "99999"] {
            assert!(CpuList::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn keywords_and_tables_resolve() {
        assert_eq!(
            CpuChoice::from_file(&CpusFile::default()).unwrap(),
            CpuChoice::Auto
        );
        assert_eq!(
            CpuChoice::from_file(&CpusFile::Keyword("off".into())).unwrap(),
            CpuChoice::Off
        );
        let err = CpuChoice::from_file(&CpusFile::Keyword("half".into())).unwrap_err();
        assert_eq!(err.key, "lab.cpus");
        let err = CpuChoice::from_file(&CpusFile::Split {
            gateway: "0".into(),
            driver: "x".into(),
        })
        .unwrap_err();
        assert_eq!(err.key, "lab.cpus.driver");
    }

    #[test]
    fn auto_splits_in_halves_and_is_off_on_one_cpu() {
        let plan = CpuChoice::Auto.plan(&list("0-1")).unwrap();
        assert_eq!(
            plan.split,
            Some(CpuSplit {
                gateway: list("0"),
                driver: list("1")
            })
        );
        let plan = CpuChoice::Auto.plan(&list("0-2,5")).unwrap();
        let split = plan.split.unwrap();
        assert_eq!((split.gateway, split.driver), (list("0-1"), list("2,5")));
        let plan = CpuChoice::Auto.plan(&list("3")).unwrap();
        assert_eq!(plan.split, None);
        assert!(plan.warning.unwrap().contains("CPU split off"));
        assert_eq!(CpuChoice::Off.plan(&list("0-7")).unwrap().split, None);
    }

    #[test]
    fn a_cpu_the_machine_lacks_is_an_error_naming_the_key() {
        let choice = CpuChoice::Split {
            gateway: list("0"),
            driver: list("1-2"),
        };
        let err = choice.plan(&list("0-1")).unwrap_err();
        assert_eq!(err.key, "lab.cpus.driver");
        assert!(err.reason.contains("CPU 2"), "{}", err.reason);
        let ok = choice.plan(&list("0-3")).unwrap();
        assert!(ok.split.is_some() && ok.warning.is_none());
        let overlap = CpuChoice::Split {
            gateway: list("0-1"),
            driver: list("1"),
        };
        assert!(overlap.plan(&list("0-1")).unwrap().warning.is_some());
    }
}
