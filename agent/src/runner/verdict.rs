//! How a run ended, in DataHub's terms: the result status and the line the report ends with, from why the run was
//! stopped (if it was), the CLI's exit code (negative: killed by that signal) and whether it ran out of memory. Pure;
//! every case is in the table test below.

use outpost_common::task::ResultStatus;

use super::process::StopReason;

/// The report's last line: its level and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Info(String),
    Error(String),
}

/// What the run was and how it ended.
#[derive(Clone, Copy, Debug)]
pub struct Ending<'a> {
    pub stopped: Option<StopReason>,
    pub exit_code: Option<i32>,
    /// The CLI's output said it ran out of memory.
    pub memory_error: bool,
    /// The run's memory limit in bytes (`memory_limit_var`), when one was set.
    pub memory_limit: Option<u64>,
    pub memory_limit_var: &'a str,
    /// "datahub ingest" or "datahub test connection".
    pub what: &'a str,
}

const MORE_MEMORY: &str = "You can resolve this issue by allocating more memory to the agent.";

pub fn verdict(ending: Ending<'_>, signal_name: impl Fn(i32) -> String) -> (ResultStatus, Line) {
    match ending.stopped {
        Some(StopReason::Cancelled) => (ResultStatus::Cancelled, Line::Info("Ingestion task was cancelled".into())),
        Some(StopReason::TimedOut) => {
            (ResultStatus::TimedOut, Line::Error("The ingestion task ran past its deadline and was stopped".into()))
        }
        Some(StopReason::Interrupted) => (
            ResultStatus::Interrupted,
            Line::Error("The agent shut down before the ingestion finished; the task will run again".into()),
        ),
        None => {
            let what = ending.what;
            let line = match ending.exit_code {
                Some(0) => Line::Info(format!("Successfully executed '{what}'")),
                Some(code) if code < 0 => Line::Error(format!(
                    "The ingestion process was killed by signal {} likely because it ran out of memory. {MORE_MEMORY}",
                    signal_name(-code)
                )),
                Some(137) => Line::Error(format!(
                    "The ingestion process was terminated with exit code 137, likely because it ran out of memory. \
                     {MORE_MEMORY}"
                )),
                Some(code) if ending.memory_error && ending.memory_limit.is_some() => Line::Error(format!(
                    "The ingestion process ran out of memory (exit code {code}): it hit its {var} of {} bytes. You can \
                     resolve this issue by raising {var}.",
                    ending.memory_limit.unwrap_or_default(),
                    var = ending.memory_limit_var
                )),
                Some(code) => Line::Info(format!("Failed to execute '{what}', exit code {code}")),
                None => Line::Error("The ingestion process ended without an exit status".into()),
            };
            let status = if ending.exit_code == Some(0) { ResultStatus::Succeeded } else { ResultStatus::Failed };
            (status, line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_its_status_and_line() {
        use ResultStatus::*;
        let base = Ending {
            stopped: None,
            exit_code: Some(0),
            memory_error: false,
            memory_limit: None,
            memory_limit_var: "OUTPOST_MEMORY_LIMIT",
            what: "datahub ingest",
        };
        let name = |signal: i32| if signal == 9 { "SIGKILL".to_owned() } else { format!("{signal}") };
        let cases: Vec<(Ending, ResultStatus, &str)> = vec![
            (
                Ending { stopped: Some(StopReason::Cancelled), exit_code: Some(-9), ..base },
                Cancelled,
                "Ingestion task was cancelled",
            ),
            (
                Ending { stopped: Some(StopReason::TimedOut), exit_code: Some(-15), ..base },
                TimedOut,
                "ran past its deadline",
            ),
            (Ending { stopped: Some(StopReason::Interrupted), ..base }, Interrupted, "the task will run again"),
            (base, Succeeded, "Successfully executed 'datahub ingest'"),
            (
                Ending { what: "datahub test connection", ..base },
                Succeeded,
                "Successfully executed 'datahub test connection'",
            ),
            (
                Ending { exit_code: Some(-9), ..base },
                Failed,
                "killed by signal SIGKILL likely because it ran out of memory",
            ),
            (Ending { exit_code: Some(137), ..base }, Failed, "exit code 137, likely because it ran out of memory"),
            (
                Ending { exit_code: Some(1), memory_error: true, memory_limit: Some(1024), ..base },
                Failed,
                "ran out of memory (exit code 1): it hit its OUTPOST_MEMORY_LIMIT of 1024 bytes",
            ),
            // A memory error without a limit of ours is the CLI's own failure.
            (
                Ending { exit_code: Some(1), memory_error: true, ..base },
                Failed,
                "Failed to execute 'datahub ingest', exit code 1",
            ),
            (Ending { exit_code: Some(2), ..base }, Failed, "Failed to execute 'datahub ingest', exit code 2"),
            (Ending { exit_code: None, ..base }, Failed, "ended without an exit status"),
        ];
        for (ending, status, text) in cases {
            let (got, line) = verdict(ending, name);
            let shown = match &line {
                Line::Info(t) | Line::Error(t) => t.clone(),
            };
            assert_eq!(got, status, "{ending:?}");
            assert!(shown.contains(text), "{ending:?}: {shown}");
        }
    }
}
