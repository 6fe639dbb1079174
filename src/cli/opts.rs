//! Option parsing with lunacm's habits: `-name value` and `-flag`, names compared without case
//! and abbreviated to any unique prefix (`-g` for `-group`, `-se` for `-serialnumber`), an
//! option given twice refused unless it may repeat (`-env`), and "did you mean" for typos.

use super::{bad, CliError};

/// One option a verb accepts.
#[derive(Debug, Clone, Copy)]
pub struct OptSpec {
    pub name: &'static str,
    /// The value's placeholder in help (`<label>`); `None` for a flag.
    pub value: Option<&'static str>,
    /// May be given more than once (`-env NAME=VALUE`).
    pub repeat: bool,
    pub help: &'static str,
}

/// A flag.
pub const fn flag(name: &'static str, help: &'static str) -> OptSpec {
    OptSpec {
        name,
        value: None,
        repeat: false,
        help,
    }
}

/// An option with a value.
pub const fn value(name: &'static str, placeholder: &'static str, help: &'static str) -> OptSpec {
    OptSpec {
        name,
        value: Some(placeholder),
        repeat: false,
        help,
    }
}

/// An option with a value that may be repeated.
pub const fn repeated(
    name: &'static str,
    placeholder: &'static str,
    help: &'static str,
) -> OptSpec {
    OptSpec {
        name,
        value: Some(placeholder),
        repeat: true,
        help,
    }
}

/// What the command line asked for.
pub enum Parsed {
    Run(Opts),
    /// `-help`, `-h`, `--help` or `-?` anywhere among the options.
    Help,
}

/// The parsed options of one verb, by their full names.
#[derive(Debug, Default)]
pub struct Opts {
    verb: &'static str,
    given: Vec<(&'static str, Option<String>)>,
}

/// Levenshtein distance, for suggestions.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The candidate closest to `word` (ignoring case), when it is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (distance(&w, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn is_help(name: &str) -> bool {
    ["help", "h", "?", "-help"].contains(&name.to_ascii_lowercase().as_str())
}

/// Finds the option `name` stands for: an exact name (any case), else the one option it is a
/// prefix of.
fn resolve(verb: &str, specs: &[OptSpec], name: &str) -> Result<OptSpec, CliError> {
    let lower = name.to_ascii_lowercase();
    if let Some(s) = specs.iter().find(|s| s.name.eq_ignore_ascii_case(&lower)) {
        return Ok(*s);
    }
    let matching: Vec<&OptSpec> = specs
        .iter()
        .filter(|s| s.name.to_ascii_lowercase().starts_with(&lower))
        .collect();
    match matching.as_slice() {
        [one] => Ok(**one),
        [] => {
            let hint = suggest(&lower, specs.iter().map(|s| s.name))
                .map(|s| format!("; did you mean -{s}?"))
                .unwrap_or_else(|| format!(" (see p11ha {verb} -help)"));
            Err(bad(format!("{verb}: unknown option -{name}{hint}")))
        }
        many => {
            let names: Vec<String> = many.iter().map(|s| format!("-{}", s.name)).collect();
            Err(bad(format!(
                "{verb}: -{name} is ambiguous: {}",
                names.join(" or ")
            )))
        }
    }
}

impl Opts {
    /// Parses `args` against `specs`. A value is the next argument whatever it looks like
    /// (`-count -1`).
    pub fn parse(
        verb: &'static str,
        specs: &[OptSpec],
        args: &[String],
    ) -> Result<Parsed, CliError> {
        let mut given: Vec<(&'static str, Option<String>)> = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix('-').filter(|n| !n.is_empty()) else {
                return Err(bad(format!(
                    "{verb}: unexpected argument {a:?} (options start with '-'; see p11ha {verb} -help)"
                )));
            };
            if is_help(name) {
                return Ok(Parsed::Help);
            }
            // `--group` is accepted like `-group`.
            let name = name.strip_prefix('-').unwrap_or(name);
            let spec = resolve(verb, specs, name)?;
            let v = match spec.value {
                Some(placeholder) => Some(it.next().cloned().ok_or_else(|| {
                    bad(format!(
                        "{verb}: -{} needs a value {placeholder}",
                        spec.name
                    ))
                })?),
                None => None,
            };
            if !spec.repeat && given.iter().any(|(n, _)| *n == spec.name) {
                return Err(bad(format!("{verb}: -{} given twice", spec.name)));
            }
            given.push((spec.name, v));
        }
        Ok(Parsed::Run(Opts { verb, given }))
    }

    pub fn verb(&self) -> &'static str {
        self.verb
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.given
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn values(&self, name: &str) -> Vec<&str> {
        self.given
            .iter()
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    pub fn need(&self, name: &str) -> Result<&str, CliError> {
        self.value(name)
            .ok_or_else(|| bad(format!("{}: -{name} is required", self.verb)))
    }

    pub fn flag(&self, name: &str) -> bool {
        self.given.iter().any(|(n, _)| *n == name)
    }

    /// Whether no option was given at all.
    pub fn is_empty(&self) -> bool {
        self.given.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[OptSpec] = &[
        value("group", "<label>", ""),
        value("serialnumber", "<serial>", ""),
        value("slot", "<n>", ""),
        repeated("env", "<NAME=VALUE>", ""),
        flag("json", ""),
    ];

    fn parse(args: &[&str]) -> Result<Opts, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match Opts::parse("v", SPECS, &args) {
            Ok(Parsed::Run(o)) => Ok(o),
            Ok(Parsed::Help) => Err("help".into()),
            Err(e) => Err(e.message),
        }
    }

    #[test]
    fn prefixes_case_and_repeats() {
        let o = parse(&[
            "-g", "web", "-SE", "444", "-env", "A=1", "--env", "B=2", "-J",
        ])
        .unwrap();
        assert_eq!(o.value("group"), Some("web"));
        assert_eq!(o.value("serialnumber"), Some("444"));
        assert_eq!(o.values("env"), ["A=1", "B=2"]);
        assert!(o.flag("json"));
        assert_eq!(
            parse(&["-s", "1"]).unwrap_err(),
            "v: -s is ambiguous: -serialnumber or -slot"
        );
        assert_eq!(
            parse(&["-grop", "x"]).unwrap_err(),
            "v: unknown option -grop; did you mean -group?"
        );
        assert_eq!(
            parse(&["-g", "a", "-group", "b"]).unwrap_err(),
            "v: -group given twice"
        );
        assert_eq!(
            parse(&["-group"]).unwrap_err(),
            "v: -group needs a value <label>"
        );
        assert_eq!(parse(&["-slot", "-1"]).unwrap().value("slot"), Some("-1"));
        assert_eq!(parse(&["-g", "x", "-help"]).unwrap_err(), "help");
        assert!(parse(&["web"])
            .unwrap_err()
            .contains("unexpected argument \"web\""));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("listgroup", ["listgroups", "addmember"]),
            Some("listgroups")
        );
        assert_eq!(suggest("xyz", ["listgroups", "addmember"]), None);
        assert_eq!(
            suggest("adstandby", ["addstandby", "addmember"]),
            Some("addstandby")
        );
    }
}
