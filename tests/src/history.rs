//! The checker of a fault run's whole history: what GMS accepted (the stand-in's records), when the controller
//! started deleting SQS messages (its log), and what it recorded about each task. Pure: it returns every
//! violation it finds, so a test can show that each rule fails when it should.

/// One result write GMS answered.
#[derive(Clone, Debug)]
pub struct ResultWrite {
    pub task: String,
    pub status: String,
    pub http: u16,
    /// When GMS answered (Unix ms).
    pub answered_ms: i64,
}

/// The controller began deleting a task's SQS message.
#[derive(Clone, Debug)]
pub struct Delete {
    pub task: String,
    pub at_ms: i64,
}

/// A task as the controller recorded it: its final state and its attempts' (epoch, state) in order.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub task: String,
    pub state: String,
    pub epoch: u64,
    pub attempts: Vec<(u64, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    pub sent: Vec<String>,
    pub writes: Vec<ResultWrite>,
    pub deletes: Vec<Delete>,
    pub recorded: Vec<Recorded>,
}

const FINAL: [&str; 7] =
    ["SUCCESS", "FAILURE", "CANCELLED", "TIMEOUT", "ABORTED", "DUPLICATE", "SUCCEEDED_WITH_WARNINGS"];
const TERMINAL_ATTEMPTS: [&str; 4] = ["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"];

/// Every rule the history breaks, in words.
pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    for task in &history.sent {
        let writes: Vec<&ResultWrite> = history.writes.iter().filter(|w| w.task == *task && w.http == 200).collect();
        let Some(first) = writes.iter().position(|w| FINAL.contains(&w.status.as_str())) else {
            violations.push(format!("{task}: no final result reached GMS"));
            continue;
        };
        let final_write = writes[first];
        // Exactly one final result: after it GMS accepted nothing but the same result again (which it ignores).
        for later in &writes[first + 1..] {
            if later.status != final_write.status {
                violations
                    .push(format!("{task}: GMS accepted {} after its final {}", later.status, final_write.status));
            }
        }
        for delete in history.deletes.iter().filter(|d| d.task == *task) {
            if delete.at_ms < final_write.answered_ms {
                violations.push(format!(
                    "{task}: its SQS message was being deleted at {} before GMS accepted its result at {}",
                    delete.at_ms, final_write.answered_ms
                ));
            }
        }
    }
    for task in &history.recorded {
        // No stale epoch changed a task: only the attempt at the task's current epoch may have ended it.
        let finished: Vec<&(u64, String)> =
            task.attempts.iter().filter(|(_, s)| TERMINAL_ATTEMPTS.contains(&s.as_str()) && s != "CANCELLED").collect();
        if finished.len() > 1 {
            violations.push(format!("{}: more than one attempt finished it: {:?}", task.task, task.attempts));
        }
        if let Some((epoch, state)) = finished.first()
            && *epoch != task.epoch
        {
            violations.push(format!(
                "{}: attempt at epoch {epoch} ({state}) is not the current one ({})",
                task.task, task.epoch
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(task: &str, status: &str, http: u16, at: i64) -> ResultWrite {
        ResultWrite { task: task.into(), status: status.into(), http, answered_ms: at }
    }

    fn clean() -> History {
        History {
            sent: vec!["a".into()],
            writes: vec![
                write("a", "RUNNING", 200, 10),
                write("a", "SUCCESS", 200, 20),
                write("a", "SUCCESS", 200, 30),
            ],
            deletes: vec![Delete { task: "a".into(), at_ms: 25 }],
            recorded: vec![Recorded {
                task: "a".into(),
                state: "SUCCEEDED".into(),
                epoch: 2,
                attempts: vec![(1, "LOST".into()), (2, "SUCCEEDED".into())],
            }],
        }
    }

    #[test]
    fn a_clean_history_passes() {
        assert_eq!(check(&clean()), Vec::<String>::new());
    }

    #[test]
    fn each_rule_fails_when_it_should() {
        let mut missing = clean();
        missing.sent.push("b".into());
        assert_eq!(check(&missing), ["b: no final result reached GMS"]);

        let mut changed = clean();
        changed.writes.push(write("a", "RUNNING", 200, 40));
        assert_eq!(check(&changed), ["a: GMS accepted RUNNING after its final SUCCESS"]);
        let mut refused_late = clean();
        refused_late.writes.push(write("a", "RUNNING", 422, 40));
        assert_eq!(check(&refused_late), Vec::<String>::new(), "a refused late write is fine");

        let mut early = clean();
        early.deletes.push(Delete { task: "a".into(), at_ms: 15 });
        assert_eq!(check(&early), ["a: its SQS message was being deleted at 15 before GMS accepted its result at 20"]);

        let mut stale = clean();
        stale.recorded[0].attempts = vec![(1, "SUCCEEDED".into()), (2, "RUNNING".into())];
        assert_eq!(check(&stale), ["a: attempt at epoch 1 (SUCCEEDED) is not the current one (2)"]);
        let mut twice = clean();
        twice.recorded[0].attempts = vec![(1, "SUCCEEDED".into()), (2, "SUCCEEDED".into())];
        assert!(check(&twice)[0].contains("more than one attempt finished it"));
    }
}
