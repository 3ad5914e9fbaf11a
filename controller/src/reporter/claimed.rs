//! Writes of claimed tasks: each is conditional on the version of the result aspect this controller's last write
//! produced, so a controller whose claim passed to another learns it from the refusal and stops (fencing that
//! reaches GMS). A refusal is checked against GMS before it counts: when the aspect's writer is still this
//! controller (our version guess was off, or an earlier write's answer was lost), the write is sent again on the
//! version GMS holds.

use outpost_common::clock::unix_ms;
use outpost_common::ids::{AspectVersion, TaskId};
use serde_json::Value;
use tracing::warn;

use super::Reporter;
use crate::gms;

/// Why a write did not go through.
#[derive(Debug)]
pub(super) enum SendError {
    Gms(gms::Error),
    /// Another controller holds the request now.
    ClaimLost(String),
}

impl From<gms::Error> for SendError {
    fn from(error: gms::Error) -> SendError {
        SendError::Gms(error)
    }
}

impl Reporter {
    /// Sends `aspect` as the task's result, conditionally when it is claimed; returns the claim's new version.
    pub(super) async fn send_result(
        &self,
        task: &TaskId,
        aspect: &Value,
        claim: Option<&AspectVersion>,
    ) -> Result<Option<AspectVersion>, SendError> {
        let urn = task.urn();
        let Some(expected) = claim else {
            self.gms.ingest_result(&urn, aspect).await?;
            return Ok(None);
        };
        let refusal = match self.gms.ingest_result_if(&urn, aspect, expected, &self.holder, unix_ms()).await {
            Ok(()) => return Ok(Some(expected.next())),
            Err(gms::Error::PreconditionFailed { body, .. }) => body,
            Err(e) => return Err(e.into()),
        };
        let current = self.gms.read_result(&urn).await?;
        match current {
            Some(current) if current.holder.as_deref() == Some(self.holder.as_str()) => {
                warn!(task = %task, ours = %expected, gms = %current.version, "our claim is at another version; adopted");
                match self.gms.ingest_result_if(&urn, aspect, &current.version, &self.holder, unix_ms()).await {
                    Ok(()) => Ok(Some(current.version.next())),
                    Err(gms::Error::PreconditionFailed { body, .. }) => Err(SendError::ClaimLost(body)),
                    Err(e) => Err(e.into()),
                }
            }
            Some(current) => Err(SendError::ClaimLost(format!(
                "{} holds the request now ({} at version {}); GMS said: {refusal}",
                current.holder.as_deref().map_or("another executor".to_owned(), |h| format!("controller {h}")),
                current.status,
                current.version
            ))),
            None => Err(SendError::ClaimLost(format!("the request's result is gone from GMS; GMS said: {refusal}"))),
        }
    }
}
