//! One engine turn's pending durable changes (group commit) and the answers that wait for them: nobody hears
//! about a change before it is committed. Also what the turn decided about tasks whose stored row it will change
//! (so later events of the same turn see it). Holds no state beyond the turn; never touches the store or the
//! network.

use std::collections::HashMap;

use outpost_common::ids::{PoolId, TaskId, WorkerId};
use tokio::sync::oneshot;

use super::{AgentCommand, Error, SessionId};
use crate::lifecycle::TaskFacts;
use crate::store::{Audit, Change, NewTask, TaskRecord};

type Answer = Box<dyn FnOnce(Option<&str>) + Send + Sync>;
type SubmitReply = oneshot::Sender<Result<(TaskRecord, bool), Error>>;

/// The changes decided in this turn, not yet written.
#[derive(Default)]
pub(super) struct Plan {
    changes: Vec<Change>,
    submit_replies: Vec<SubmitReply>,
    answers: Vec<Answer>,
    /// Tasks submitted in this turn (not in the store yet if new), with their pools.
    submitted: HashMap<TaskId, PoolId>,
    /// Tasks nobody holds any more whose row this turn changes: their facts once it commits.
    decided: HashMap<TaskId, (TaskFacts, PoolId)>,
    /// Sessions opened in this turn (closed again if it does not commit).
    pub opened: Vec<(WorkerId, SessionId)>,
    /// Commands that announce this turn's changes (a cancel), sent once it is committed.
    commands: Vec<(WorkerId, AgentCommand)>,
}

impl Plan {
    /// A change to write with the turn, after the ones before it.
    pub fn change(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// An operator's change that `result` says was made: its audit row goes into this turn, after the change.
    pub fn audit<T>(&mut self, audit: Option<Audit>, result: &Result<T, Error>) {
        if let (Some(audit), Ok(_)) = (audit, result) {
            self.changes.push(Change::Audit(audit));
        }
    }

    /// A task to record (its answer comes from the insert).
    pub fn submit(&mut self, task: NewTask, reply: SubmitReply) {
        self.submitted.insert(task.id.clone(), task.pool.clone());
        self.changes.push(Change::Submit(task));
        self.submit_replies.push(reply);
    }

    /// Notes what the turn made of a task nobody holds now (ended, requeued, cancelled, retried).
    pub fn decided(&mut self, task: &TaskId, facts: TaskFacts, pool: &PoolId) {
        self.decided.insert(task.clone(), (facts, pool.clone()));
    }

    /// A task's facts as this turn left them, when it changed them.
    pub fn facts(&self, task: &TaskId) -> Option<&(TaskFacts, PoolId)> {
        self.decided.get(task)
    }

    /// The pool of a task submitted in this turn.
    pub fn submitted(&self, task: &TaskId) -> Option<&PoolId> {
        self.submitted.get(task)
    }

    /// An answer to send once the turn is durable. A success turns into `NotDurable` if the commit fails; a
    /// refusal is sent as it is.
    pub fn answer<T: Send + Sync + 'static>(
        &mut self,
        reply: oneshot::Sender<Result<T, Error>>,
        result: Result<T, Error>,
    ) {
        self.answers.push(Box::new(move |failure: Option<&str>| {
            let result = match (result, failure) {
                (Ok(_), Some(failure)) => Err(Error::NotDurable(failure.to_owned())),
                (result, _) => result,
            };
            let _ = reply.send(result);
        }));
    }

    /// A command to send once the turn is committed (dropped if it is not).
    pub fn command(&mut self, worker: &WorkerId, command: AgentCommand) {
        self.commands.push((worker.clone(), command));
    }

    pub fn take_commands(&mut self) -> Vec<(WorkerId, AgentCommand)> {
        std::mem::take(&mut self.commands)
    }

    /// Takes the changes to write (the answers stay until [`Plan::settle`]).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Sends every answer: `submitted` holds the insert's answers (in submit order) when the turn committed,
    /// `failure` says why it did not.
    pub fn settle(self, submitted: Vec<(TaskRecord, bool)>, failure: Option<&str>) {
        let mut submitted = submitted.into_iter();
        for reply in self.submit_replies {
            let answer = match (failure, submitted.next()) {
                (None, Some(answer)) => Ok(answer),
                (Some(failure), _) => Err(Error::NotDurable(failure.to_owned())),
                (None, None) => Err(Error::NotDurable("the submit was not recorded".to_owned())),
            };
            let _ = reply.send(answer);
        }
        for answer in self.answers {
            answer(failure);
        }
    }
}
