//! The report text, in the layout of DataHub's executor (`~~~~ Execution Summary - <TASK> ~~~~`, the exec id with
//! info and error lines, the pretty-printed ingestion report, the log tail), capped in size.

use std::time::SystemTime;

/// The outcome words DataHub puts under the summary heading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    Cancelled,
}

/// Info and error lines collected during a run, each stamped like DataHub's `format_report_line`.
#[derive(Debug, Default)]
pub struct ExecutionReport {
    infos: Vec<String>,
    errors: Vec<String>,
}

fn utc_stamp() -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = outpost_common::duration::signed_secs(now);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both are small and positive by construction (a day of 1..=31, a month of 1..=12).
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// A string as Python's `repr` writes it (the summary line is a Python dict in DataHub's reports).
fn py_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn py_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| py_repr(s)).collect();
    format!("[{}]", inner.join(", "))
}

impl ExecutionReport {
    pub fn info(&mut self, message: impl AsRef<str>) {
        self.infos.push(format!("{} INFO: {}", utc_stamp(), message.as_ref()));
    }

    pub fn error(&mut self, message: impl AsRef<str>) {
        self.errors.push(format!("{} ERROR: {}", utc_stamp(), message.as_ref()));
    }

    /// The full report text, capped at `max_chars` by cutting the front of the log tail.
    pub fn render(
        &self,
        exec_id: &str,
        task_name: &str,
        verdict: Verdict,
        structured: Option<&str>,
        logs: &str,
        max_chars: usize,
    ) -> String {
        let mut head = format!("~~~~ Execution Summary - {task_name} ~~~~\n");
        head.push_str(match verdict {
            Verdict::Failure => "Execution finished with errors.",
            Verdict::Cancelled => "Execution was cancelled by request.",
            Verdict::Success => "Execution finished successfully!",
        });
        head.push('\n');
        head.push_str(&format!(
            "{{'exec_id': {}, 'infos': {}, 'errors': {}}}\n\n",
            py_repr(exec_id),
            py_list(&self.infos),
            py_list(&self.errors)
        ));
        if let Some(structured) = structured {
            head.push_str("~~~~ Ingestion Report ~~~~\n");
            let pretty = serde_json::from_str::<serde_json::Value>(structured)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| structured.to_owned());
            head.push_str(&pretty);
            head.push_str("\n\n");
        }
        head.push_str("~~~~ Ingestion Logs ~~~~\n");
        cap(head, logs, max_chars)
    }
}

/// Marker for a report cut to fit the cap.
pub const REPORT_TRUNCATED: &str = "[report truncated to fit the size cap...]\n";

/// `head` + `logs` + "\n", keeping the end of the logs when the whole would exceed `max_chars` bytes; if the head
/// alone is too big (a huge ingestion report), the head is cut too. Always ends on a character boundary.
fn cap(head: String, logs: &str, max_chars: usize) -> String {
    let total = head.len() + logs.len() + 1;
    if total <= max_chars {
        return format!("{head}{logs}\n");
    }
    let room = max_chars.saturating_sub(head.len() + REPORT_TRUNCATED.len() + 1);
    if room > 0 {
        let mut start = logs.len() - room.min(logs.len());
        while !logs.is_char_boundary(start) {
            start += 1;
        }
        return format!("{head}{REPORT_TRUNCATED}{}\n", &logs[start..]);
    }
    let mut end = max_chars.saturating_sub(REPORT_TRUNCATED.len()).min(head.len());
    while !head.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{REPORT_TRUNCATED}", &head[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_datahubs_executor() {
        let mut report = ExecutionReport::default();
        report.info("Successfully executed 'datahub ingest'");
        let text = report.render("abc", "RUN_INGEST", Verdict::Success, Some("{\"a\":1}"), "line 1\nline 2\n", 1 << 20);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "~~~~ Execution Summary - RUN_INGEST ~~~~");
        assert_eq!(lines[1], "Execution finished successfully!");
        assert!(lines[2].starts_with("{'exec_id': 'abc', 'infos': [\""), "{}", lines[2]);
        assert!(lines[2].ends_with(" INFO: Successfully executed 'datahub ingest'\"], 'errors': []}"), "{}", lines[2]);
        assert_eq!(
            &lines[3..],
            [
                "",
                "~~~~ Ingestion Report ~~~~",
                "{",
                "  \"a\": 1",
                "}",
                "",
                "~~~~ Ingestion Logs ~~~~",
                "line 1",
                "line 2",
                ""
            ]
        );
    }

    #[test]
    fn oversized_reports_keep_the_newest_logs_and_say_so() {
        let report = ExecutionReport::default();
        let logs: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let text = report.render("abc", "RUN_INGEST", Verdict::Failure, None, &logs, 400);
        assert!(text.len() <= 400, "{} > 400", text.len());
        assert!(text.contains(REPORT_TRUNCATED));
        assert!(text.ends_with("line 999\n\n"));
        assert!(text.starts_with("~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished with errors.\n"));
    }

    #[test]
    fn python_repr_quotes_like_python() {
        assert_eq!(py_repr("plain"), "'plain'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("both ' and \""), "'both \\' and \"'");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }
}
