//! The preflight report both programs print (`outpost-controller doctor`, `outpostctl doctor`): one line per
//! check with its verdict and, where it fails, what to do. Formatting only; knows nothing of what is checked.

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Check {
    pub verdict: Verdict,
    pub what: String,
    pub detail: String,
}

pub fn check(verdict: Verdict, what: impl Into<String>, detail: impl Into<String>) -> Check {
    Check { verdict, what: what.into(), detail: detail.into() }
}

/// The report as text: one line per check, `ok`, `warn` or `FAIL`, then a summary line.
pub fn report(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let verdict = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("{verdict}  {}: {}\n", c.what, c.detail));
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    out.push_str(&format!("{} checks: {failed} failed, {warned} warnings\n", checks.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_failures_and_warnings() {
        let checks = [
            check(Verdict::Ok, "a", "fine"),
            check(Verdict::Warn, "b", "hmm"),
            check(Verdict::Fail, "c", "broken: fix it"),
        ];
        assert_eq!(
            report(&checks),
            "ok    a: fine\nwarn  b: hmm\nFAIL  c: broken: fix it\n3 checks: 1 failed, 1 warnings\n"
        );
    }
}
