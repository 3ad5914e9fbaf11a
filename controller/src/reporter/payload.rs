//! The `dataHubExecutionRequestResult` aspects the reporter sends, shaped exactly as DataHub's executor shapes
//! them (datahub-protocol.md §1.3), with reports capped so GMS never refuses them for size.

use serde_json::{Value, json};

/// How much of a report's head is kept when its middle is cut.
const KEEP_HEAD: usize = 16 * 1024;

/// RUNNING with the attempt's start time (the kickoff write), optionally with the log tail (progress).
pub fn running(start_time_ms: i64, report: Option<&str>, max_report_bytes: usize) -> Value {
    let mut aspect = json!({"status": "RUNNING", "startTimeMs": start_time_ms});
    if let Some(report) = report {
        aspect["report"] = Value::String(cap(report, max_report_bytes));
    }
    aspect
}

/// What a terminal write carries.
pub struct Terminal<'a> {
    /// SUCCESS, FAILURE, CANCELLED, TIMEOUT, ABORTED.
    pub status: &'a str,
    pub task_name: &'a str,
    pub start_time_ms: i64,
    pub duration_ms: i64,
    pub report: &'a str,
    /// The CLI's `--report-to` JSON; empty when there is none.
    pub structured_report: &'a str,
}

/// The terminal aspect. A structured report over `max_structured_bytes` is left out and the report says so.
pub fn terminal(t: &Terminal<'_>, max_report_bytes: usize, max_structured_bytes: usize) -> Value {
    let mut report = t.report.to_owned();
    let mut aspect = json!({
        "status": t.status,
        "startTimeMs": t.start_time_ms,
        "durationMs": t.duration_ms,
    });
    if !t.structured_report.is_empty() {
        if t.structured_report.len() <= max_structured_bytes {
            aspect["structuredReport"] = json!({
                "type": t.task_name,
                "serializedValue": t.structured_report,
                "contentType": "application/json",
            });
        } else {
            report = format!(
                "WARNING: the structured ingestion report ({} bytes) is over the {} byte limit and was left out.\n{report}",
                t.structured_report.len(),
                max_structured_bytes
            );
        }
    }
    aspect["report"] = Value::String(cap(&report, max_report_bytes));
    aspect
}

/// `text` if it fits in `max` bytes; else its head and its tail with a marker saying how much was cut between.
pub fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let marker_room = 120;
    let budget = max.saturating_sub(marker_room);
    let head_len = floor_boundary(text, KEEP_HEAD.min(budget / 2));
    let tail_len = budget - head_len;
    let tail_start = ceil_boundary(text, text.len() - tail_len.min(text.len()));
    let cut = tail_start - head_len;
    format!(
        "{}\n[... {cut} bytes of this report were cut here to keep it under {max} bytes ...]\n{}",
        &text[..head_len],
        &text[tail_start..]
    )
}

fn floor_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_datahubs_executor() {
        assert_eq!(running(17, None, 100), json!({"status": "RUNNING", "startTimeMs": 17}));
        assert_eq!(running(17, Some("log"), 100), json!({"status": "RUNNING", "startTimeMs": 17, "report": "log"}));
        let t = Terminal {
            status: "SUCCESS",
            task_name: "RUN_INGEST",
            start_time_ms: 1,
            duration_ms: 2,
            report: "done",
            structured_report: "{\"a\":1}",
        };
        assert_eq!(
            terminal(&t, 100, 100),
            json!({"status": "SUCCESS", "startTimeMs": 1, "durationMs": 2, "report": "done",
                   "structuredReport": {"type": "RUN_INGEST", "serializedValue": "{\"a\":1}",
                                        "contentType": "application/json"}})
        );
        let no_structured = terminal(&Terminal { structured_report: "", ..t }, 100, 100);
        assert!(no_structured.get("structuredReport").is_none());
    }

    #[test]
    fn oversized_reports_are_cut_with_a_marker_and_keep_head_and_tail() {
        let text = format!("HEAD{}TAIL", "x".repeat(10_000));
        let capped = cap(&text, 1_000);
        assert!(capped.len() <= 1_000, "{}", capped.len());
        assert!(capped.starts_with("HEAD"));
        assert!(capped.ends_with("TAIL"));
        assert!(capped.contains("bytes of this report were cut here to keep it under 1000 bytes"));
        assert_eq!(cap("short", 1_000), "short");
        let multibyte = "é".repeat(5_000);
        assert!(cap(&multibyte, 999).len() <= 999);
    }

    #[test]
    fn an_oversized_structured_report_is_left_out_and_said_so() {
        let big = "9".repeat(500);
        let t = Terminal {
            status: "FAILURE",
            task_name: "RUN_INGEST",
            start_time_ms: 1,
            duration_ms: 2,
            report: "logs",
            structured_report: &big,
        };
        let aspect = terminal(&t, 10_000, 100);
        assert!(aspect.get("structuredReport").is_none());
        assert_eq!(
            aspect["report"],
            "WARNING: the structured ingestion report (500 bytes) is over the 100 byte limit and was left out.\nlogs"
        );
    }
}
