//! The range of every numeric config key, declared on the key itself as its flag's value parser
//! (`#[arg(value_parser = range::int::<usize>(1, 100_000))]`). A flag out of range is refused by
//! the command line's parse (exit 2, naming the flag and the range); a config file's value is
//! passed through the same parser by `check_file_values`, so both routes share one declaration and
//! nothing runs (no allocation, no thread, no file) on a value that could have been refused.
//!
//! The bounds are wide: they refuse what cannot be meant (a negative count, NaN, infinity, a
//! billion micro-steps), not unusual experiments. Rules that relate keys (`min_res <= train_size`)
//! stay in `TrainConfig::validate`.

/// A value parser for an integer key in `min..=max`.
pub fn int<T>(min: u64, max: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    move |s: &str| {
        let range = format!("must be an integer in {min}..={max}");
        let v: u64 = s.trim().parse().map_err(|_| range.clone())?;
        if !(min..=max).contains(&v) {
            return Err(range);
        }
        T::try_from(v).map_err(|_| range)
    }
}

/// Which ends of a float range are included.
#[derive(Clone, Copy, Debug)]
pub enum Ends {
    /// [min, max]
    Closed,
    /// (min, max]: e.g. a learning rate, a positive epsilon.
    AboveMin,
    /// [min, max): e.g. a momentum or a decay below 1.
    BelowMax,
}

/// A value parser for a finite float key between `min` and `max` (ends by `ends`).
pub fn float(
    min: f64,
    max: f64,
    ends: Ends,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        type Within = fn(f64, f64, f64) -> bool;
        let (open, close, ok): (&str, &str, Within) = match ends {
            Ends::Closed => ("[", "]", |v, lo, hi| lo <= v && v <= hi),
            Ends::AboveMin => ("(", "]", |v, lo, hi| lo < v && v <= hi),
            Ends::BelowMax => ("[", ")", |v, lo, hi| lo <= v && v < hi),
        };
        let range = format!("must be a number in {open}{min}, {max}{close}");
        let v: f64 = s.trim().parse().map_err(|_| range.clone())?;
        // NaN fails every comparison; infinities are outside every finite range.
        if ok(v, min, max) && v.is_finite() {
            Ok(v)
        } else {
            Err(range)
        }
    }
}

/// Passes every numeric value of a config (as a TOML table: a file's keys, or flags merged into
/// them) through its key's flag parser, so a file's value meets the same range as the flag: the
/// values are parsed as one command line by `cmd`, the keys' own flags.
pub fn check_file_values(cmd: &clap::Command, table: &toml::Table) -> Result<(), String> {
    let mut argv = vec!["config".to_string()];
    for arg in cmd.get_arguments() {
        let key = arg.get_id().as_str();
        let Some(value) = table.get(key) else { continue };
        let items: Vec<&toml::Value> = match value {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        let texts: Option<Vec<String>> = items
            .iter()
            .map(|item| match item {
                toml::Value::Integer(i) => Some(i.to_string()),
                // Rust's float syntax reads every float TOML holds back (nan, inf, 1e300).
                toml::Value::Float(f) => Some(f.to_string()),
                _ => None, // strings, booleans: their type's parse already checked them
            })
            .collect();
        match texts {
            Some(t) if !t.is_empty() => argv.push(format!("--{}={}", key.replace('_', "-"), t.join(","))),
            _ => {}
        }
    }
    let Err(e) = cmd.clone().try_get_matches_from(&argv) else { return Ok(()) };
    use clap::error::{ContextKind, ContextValue};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag = context(ContextKind::InvalidArg).unwrap_or_default();
    let flag = flag.split(' ').next().unwrap_or_default().to_string();
    let value = context(ContextKind::InvalidValue).unwrap_or_default();
    let why = std::error::Error::source(&e).map_or_else(|| e.kind().to_string(), |s| s.to_string());
    Err(format!("{} = {value}: {flag} {why}", flag.trim_start_matches('-').replace('-', "_")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_refuse_what_cannot_be_meant() {
        let epochs = int::<usize>(1, 100_000);
        assert_eq!(epochs("90"), Ok(90));
        for bad in ["0", "-1", "100001", "18446744073709551615", "99999999999999999999", "nan", "1.5", ""] {
            assert_eq!(epochs(bad), Err("must be an integer in 1..=100000".into()), "{bad}");
        }
        let lr = float(0.0, 1000.0, Ends::AboveMin);
        assert_eq!(lr("0.1"), Ok(0.1));
        for bad in ["0", "-1", "nan", "NaN", "inf", "-inf", "1e300", "x"] {
            assert_eq!(lr(bad), Err("must be a number in (0, 1000]".into()), "{bad}");
        }
        let momentum = float(0.0, 1.0, Ends::BelowMax);
        assert_eq!((momentum("0"), momentum("1").is_err()), (Ok(0.0), true));
        let p = float(0.0, 1.0, Ends::Closed);
        assert_eq!((p("0"), p("1"), p("1.0000001").is_err()), (Ok(0.0), Ok(1.0), true));
    }
}
