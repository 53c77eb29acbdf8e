//! Reading a config: the TOML file (or the embedded default), the `CITYGATE__SECTION__KEY`
//! overrides from the environment, and every problem reported at once, a value of the wrong
//! type included, each naming its key (and the variable that set it).

use std::path::Path;

use super::{Config, ConfigError, DEFAULT_CONFIG, DatasetConfig, ENV_PREFIX, validate};

impl Config {
    /// Loads `path`, or the embedded default config when `path` is `None`, applies the
    /// `CITYGATE__…` variables from the process environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        match path {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    source_name: name.clone(),
                    problems: vec![format!("cannot read the file: {e}")],
                })?;
                Config::from_toml(&text, &name, &env)
            }
            None => Config::from_toml(DEFAULT_CONFIG, "the embedded default config", &env),
        }
    }

    /// Parses TOML text with environment overrides `env` (`(name, value)` pairs) applied.
    ///
    /// Every problem is reported at once: a value of the wrong type is noted and left out
    /// (its default stands in) and reading goes on; a dataset that cannot be read is noted
    /// and the others are read and checked. A problem that comes from a `CITYGATE__…`
    /// variable names it.
    pub fn from_toml(
        text: &str,
        source_name: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            source_name: source_name.to_string(),
            problems: vec![e.to_string().trim_end().to_string()],
        })?;
        let mut problems = Vec::new();
        let mut overridden = Vec::new();
        for (name, raw) in env {
            match apply_env_override(&mut table, name, raw) {
                Ok(path) => overridden.push((path, name.clone())),
                Err(p) => problems.push(p),
            }
        }

        let datasets = table.remove("datasets");
        let mut config: Option<Config> =
            read_reporting_all(toml::Value::Table(table), "", &mut problems);
        let mut positions = Vec::new();
        let mut unread_datasets = false;
        match datasets {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let at = format!("datasets[{i}]");
                    match read_reporting_all::<DatasetConfig>(item, &at, &mut problems) {
                        Some(ds) => {
                            if let Some(c) = config.as_mut() {
                                c.datasets.push(ds);
                            }
                            positions.push(i);
                        }
                        None => unread_datasets = true,
                    }
                }
            }
            Some(_) => problems.push(
                "datasets: expected an array of tables, each under a `[[datasets]]` header".into(),
            ),
        }
        if let Some(config) = &config {
            problems.extend(
                validate::validate(config, &positions)
                    .into_iter()
                    // A dataset that could not be read was reported; "none at all" would mislead.
                    .filter(|p| !(unread_datasets && p.starts_with("datasets: "))),
            );
        }
        let from_env = |problem: &String| {
            overridden.iter().find(|(path, _)| {
                let at = problem.split(':').next().unwrap_or("");
                at == path
                    || at.starts_with(&format!("{path}."))
                    || at.starts_with(&format!("{path}["))
                    || path.starts_with(&format!("{at}."))
            })
        };
        let mut any_from_env = false;
        let problems: Vec<String> = problems
            .into_iter()
            .map(|p| match from_env(&p) {
                Some((_, name)) => {
                    any_from_env = true;
                    format!("{p} (set by {name})")
                }
                None => p,
            })
            .collect();
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError {
                source_name: if any_from_env {
                    format!("{source_name} with the {ENV_PREFIX}… environment variables")
                } else {
                    source_name.to_string()
                },
                problems,
            }),
        }
    }
}

/// Applies `CITYGATE__A__B=value` as `a.b = value`. The value is read as a TOML value when it
/// parses as one (`100`, `true`, `"x"`) and as a plain string otherwise (`0.0.0.0:8080`, `5s`).
/// Returns the dotted path it set (`http.listen`).
fn apply_env_override(table: &mut toml::Table, name: &str, raw: &str) -> Result<String, String> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "{name}: malformed override name (expected CITYGATE__SECTION__KEY)"
        ));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = path
        .split_last()
        .expect("split yields one segment at least");
    let mut current = table;
    let mut segments = parents.iter();
    while let Some(segment) = segments.next() {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            // An array of sections ([[upstream]]) takes an index: UPSTREAM__0__PASSWORD.
            toml::Value::Array(items) => {
                let index = segments.next().and_then(|i| i.parse::<usize>().ok());
                let len = items.len();
                match index.and_then(|i| items.get_mut(i)) {
                    Some(toml::Value::Table(t)) => t,
                    _ => {
                        return Err(format!(
                            "{name}: `{segment}` is a list of {} sections: name one by its \
                             index, e.g. CITYGATE__{}__0__KEY",
                            len,
                            segment.to_ascii_uppercase()
                        ));
                    }
                }
            }
            _ => return Err(format!("{name}: `{segment}` is not a section")),
        };
    }
    current.insert(last.clone(), value);
    Ok(path.join("."))
}

/// Deserialises `value` as a `T`, noting every problem in `problems` with its path under
/// `prefix`. A value of the wrong type (or a section that lacks a required key) is noted,
/// taken out so that its default stands in, and reading starts again; `None` when what is
/// at fault cannot be taken out (an element of a list) and `T` cannot be made.
fn read_reporting_all<T: serde::de::DeserializeOwned>(
    mut value: toml::Value,
    prefix: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty() || b.starts_with('[')) {
        (true, _) => b.to_string(),
        (false, true) => format!("{a}{b}"),
        (false, false) => format!("{a}.{b}"),
    };
    let mut taken_out: Vec<String> = Vec::new();
    let mut broken = false;
    // Each round takes one value out: the rounds end.
    for _ in 0..256 {
        let mut unknown = Vec::new();
        let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let de = serde_ignored::Deserializer::new(value.clone(), &mut note_unknown);
        let error = match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(read) => {
                // serde_ignored writes list positions as `.0`; the rest of the report as `[0]`.
                problems.extend(unknown.into_iter().map(|k| {
                    let steps: Vec<Result<String, usize>> = k
                        .split('.')
                        .map(|s| s.parse::<usize>().map_err(|_| s.to_string()))
                        .map(|r| match r {
                            Ok(index) => Err(index),
                            Err(key) => Ok(key),
                        })
                        .collect();
                    format!("{}: unknown key", join(prefix, &steps_path(&steps)))
                }));
                return (!broken).then_some(read);
            }
            Err(e) => e,
        };
        let steps: Vec<Result<String, usize>> = error
            .path()
            .iter()
            .map(|segment| {
                use serde_path_to_error::Segment;
                match segment {
                    Segment::Map { key } | Segment::Enum { variant: key } => Ok(key.clone()),
                    Segment::Seq { index } => Err(*index),
                    Segment::Unknown => Err(usize::MAX),
                }
            })
            .collect();
        let path = steps_path(&steps);
        let message = error.into_inner().message().trim().to_string();
        let (at_fault, message) = match message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(field) => (join(&path, field), "required, and missing".to_string()),
            None => (path.clone(), message),
        };
        // A section taken out for one problem may lack what its parent requires: that is
        // the same problem, said once.
        if !taken_out.contains(&at_fault) {
            problems.push(format!("{}: {message}", join(prefix, &at_fault)));
        }
        // An element of a list cannot be taken out alone: the whole list goes, `T` can no
        // longer be made, and reading goes on only to find the other problems.
        let mut steps = &steps[..];
        while !take_out(&mut value, steps) {
            broken = true;
            match steps.iter().rposition(|s| s.is_ok()) {
                Some(i) if i + 1 < steps.len() => steps = &steps[..=i],
                _ => return None,
            }
        }
        taken_out.push(steps_path(steps));
    }
    None
}

/// `a.b[2].c` for steps `a`, `b`, 2, `c`.
fn steps_path(steps: &[Result<String, usize>]) -> String {
    let mut path = String::new();
    for step in steps {
        match step {
            Ok(key) if path.is_empty() => path.push_str(key),
            Ok(key) => {
                path.push('.');
                path.push_str(key);
            }
            Err(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// Removes the value at `steps` (`Ok(key)` into a table, `Err(index)` into a list); false
/// when there is nothing to remove or it is an element of a list (the elements after it
/// would move, and their problems would be reported at the wrong place).
fn take_out(value: &mut toml::Value, steps: &[Result<String, usize>]) -> bool {
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut current = value;
    for step in parents {
        current = match (step, current) {
            (Ok(key), toml::Value::Table(t)) => match t.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            (Err(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, current) {
        (Ok(key), toml::Value::Table(t)) => t.remove(key).is_some(),
        _ => false,
    }
}
