//! The one mapping from the application error to the wire (see `service::error` for the policy).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::Violations;
use crate::service::Error;

/// The `ErrorInfo.domain` of every error finmatch raises.
pub const ERROR_DOMAIN: &str = "finmatch";

/// How tonic begins the message of a request message over the server's limit.
const OVERSIZED: &str = "Error, decoded message length too large";

/// A request message over `FINMATCH_MAX_MESSAGE_BYTES` answers RESOURCE_EXHAUSTED, as gRPC's
/// status-code guide and its other implementations have it (tonic answers OUT_OF_RANGE), with
/// the setting named. Other responses pass unchanged.
pub fn oversized_as_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    // Every response passes here: only a trailers-only OUT_OF_RANGE (11) is read further.
    if response.headers().get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return response;
    }
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if !status.message().starts_with(OVERSIZED) {
        return response;
    }
    let refined = Status::resource_exhausted(format!(
        "{}: the server takes request messages of at most FINMATCH_MAX_MESSAGE_BYTES; send a \
         smaller one",
        status.message()
    ));
    // The trailers-only response of a refused request: its status is in the headers.
    if refined.add_header(response.headers_mut()).is_err() {
        tracing::warn!("could not rewrite the status of an oversized request");
    }
    response
}

/// A request's refused fields: INVALID_ARGUMENT with a BadRequest violation per field.
impl From<Violations> for Status {
    fn from(violations: Violations) -> Self {
        Error::InvalidArgument(violations).into()
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            // A serialization failure or deadlock that outlived the use case's retries: nothing
            // was written, and the whole call may be sent again.
            error if error.is_retryable_conflict() => {
                tracing::warn!("transaction conflict outlived its retries; answering ABORTED");
                let details =
                    ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(100)));
                Status::with_error_details(
                    Code::Aborted,
                    "the call conflicted with concurrent changes and was not applied; \
                     send it again",
                    details,
                )
            }
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations.violations() {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                let message = match violations.len() {
                    1 => violations.to_string(),
                    n => format!("{n} invalid fields: {}", violations),
                };
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound { entity, id } => {
                let details = ErrorDetails::with_resource_info(entity, id.clone(), "", "not found");
                Status::with_error_details(
                    Code::NotFound,
                    format!("{entity} {id} not found"),
                    details,
                )
            }
            Error::AlreadyExists {
                entity,
                reason,
                message,
                existing_id: id,
            } => {
                let mut details =
                    ErrorDetails::with_resource_info(entity, id.clone(), "", message.clone());
                let metadata = std::collections::HashMap::from([(format!("{entity}_id"), id)]);
                details.set_error_info(reason, ERROR_DOMAIN, metadata);
                Status::with_error_details(Code::AlreadyExists, message, details)
            }
            Error::FailedPrecondition {
                reason,
                message,
                metadata,
            } => {
                let metadata = metadata
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<std::collections::HashMap<_, _>>();
                let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::Unavailable => {
                let details =
                    ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1)));
                Status::with_error_details(
                    Code::Unavailable,
                    "the database is unavailable; retry with backoff",
                    details,
                )
            }
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::Unimplemented(rpc) => {
                Status::unimplemented(format!("{rpc} is not implemented yet"))
            }
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                Status::internal("internal error; it has been logged")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::error::Conflict;

    #[test]
    fn a_conflict_that_outlived_its_retries_is_aborted_not_internal() {
        let status = Status::from(Error::Internal(anyhow::Error::new(Conflict)));
        assert_eq!(status.code(), Code::Aborted);
        assert!(status.get_details_retry_info().is_some());
        let status = Status::from(Error::Internal(anyhow::anyhow!("a bug")));
        assert_eq!(status.code(), Code::Internal);
    }
}
