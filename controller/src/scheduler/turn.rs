//! One engine turn's pending durable changes (group commit) and the answers that wait for them: nobody hears
//! about a change before it is committed. Holds no state beyond the turn; never touches the store or the network.

use outpost_common::ids::AttemptRef;
use tokio::sync::oneshot;

use super::Error;
use crate::store::{AttemptEnd, NewTask, TaskRecord};

type Answer = Box<dyn FnOnce(Option<&str>) + Send + Sync>;
type SubmitReply = oneshot::Sender<Result<(TaskRecord, bool), Error>>;

/// The changes decided in this turn, not yet written.
#[derive(Default)]
pub(super) struct Plan {
    pub new_tasks: Vec<NewTask>,
    submit_replies: Vec<SubmitReply>,
    pub starts: Vec<AttemptRef>,
    pub ends: Vec<AttemptEnd>,
    answers: Vec<Answer>,
}

impl Plan {
    /// A task to record (its answer comes from the insert).
    pub fn submit(&mut self, task: NewTask, reply: SubmitReply) {
        self.new_tasks.push(task);
        self.submit_replies.push(reply);
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

    /// Whether anything must be written.
    pub fn has_writes(&self) -> bool {
        !self.new_tasks.is_empty() || !self.starts.is_empty() || !self.ends.is_empty()
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
