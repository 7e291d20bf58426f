//! The import's calls: CreateEnterprise and ImportNeeds with the bearer token, retried with backoff
//! when the server or the connection fails under them.

use anyhow::bail;
use tonic::transport::Channel;

use super::{Answer, Chunk, MAX_BACKOFF, Options, Rejection};
use crate::proto as pb;
use crate::proto::code_name;
use crate::proto::enterprise_service_client::EnterpriseServiceClient;
use crate::proto::financing_service_client::FinancingServiceClient;

/// Sends one chunk in one ImportNeeds call, retried as [`Options`] says.
pub(super) async fn import_chunk(
    client: FinancingServiceClient<Channel>,
    bearer: &Bearer,
    chunk: Chunk,
    options: &Options,
) -> Answer {
    let first_row = chunk.rows[0] + 2;
    let response = with_retries(options, || {
        let mut client = client.clone();
        let request = with_token(
            tonic::Request::new(tokio_stream::iter(chunk.items.clone())),
            bearer,
        );
        async move { client.import_needs(request).await }
    })
    .await
    .map_err(|s| {
        anyhow::anyhow!(
            "ImportNeeds of the chunk from row {first_row} failed: {}: {}",
            code_name(s.code()),
            s.message()
        )
    })?
    .into_inner();
    Ok((chunk, response))
}

/// Calls `call` until it succeeds, fails with an error a retry cannot mend, or has been retried
/// `options.retries` times; the waits double from `options.first_backoff`.
pub(super) async fn with_retries<T, F, Fut>(
    options: &Options,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut backoff = options.first_backoff;
    let mut attempt = 0;
    loop {
        match call().await {
            Err(status) if attempt < options.retries && retryable(&status) => {
                tracing::warn!(
                    code = code_name(status.code()),
                    message = status.message(),
                    "call failed, retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a failed call may succeed when made again: the server unavailable or shedding load, or
/// the connection failing under the call.
pub(super) fn retryable(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    use tonic::Code;
    if matches!(status.code(), Code::Unavailable | Code::ResourceExhausted) {
        return true;
    }
    // tonic reports a broken connection as UNKNOWN "transport error" with the transport error as
    // its source, or as an h2 error whose message says so.
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() {
            return true;
        }
        source = error.source();
    }
    matches!(
        status.code(),
        Code::Internal | Code::Unknown | Code::Cancelled
    ) && status.message().starts_with("h2 protocol error")
}

pub(super) type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

pub(super) fn with_token<T>(mut request: tonic::Request<T>, bearer: &Bearer) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// Registers an enterprise, or finds it registered; Err(rejection template) when it cannot be.
pub(super) async fn register(
    client: EnterpriseServiceClient<Channel>,
    bearer: &Bearer,
    enterprise: pb::Enterprise,
    options: &Options,
) -> anyhow::Result<Result<String, Rejection>> {
    use tonic_types::StatusExt;
    let code = enterprise.credit_code.clone();
    let created = with_retries(options, || {
        let mut client = client.clone();
        let request = with_token(
            tonic::Request::new(pb::CreateEnterpriseRequest {
                enterprise: Some(enterprise.clone()),
            }),
            bearer,
        );
        async move { client.create_enterprise(request).await }
    })
    .await;
    match created {
        Ok(response) => Ok(Ok(response.into_inner().enterprise.unwrap_or_default().id)),
        // Registered already: the refusal names the enterprise.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            match status.get_details_resource_info() {
                Some(info) if !info.resource_name.is_empty() => Ok(Ok(info.resource_name)),
                _ => bail!(
                    "CreateEnterprise for {code} answered ALREADY_EXISTS without naming the \
                     enterprise: {}",
                    status.message()
                ),
            }
        }
        Err(status)
            if retryable(&status)
                || matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
        {
            bail!(
                "CreateEnterprise failed: {}: {}",
                code_name(status.code()),
                status.message()
            );
        }
        Err(status) => {
            let reason = match (
                status.get_details_error_info(),
                status.get_details_bad_request(),
            ) {
                (Some(info), _) => info.reason,
                (None, Some(bad)) => {
                    columns_at_fault(bad.field_violations.iter().map(|v| v.field.as_str()))
                }
                (None, None) => String::new(),
            };
            Ok(Err(Rejection {
                row: 0,
                credit_code: code,
                code: code_name(status.code()).to_owned(),
                reason,
                // The message states every field violation already.
                message: status.message().to_owned(),
            }))
        }
    }
}

/// The file's columns a request's bad fields come from (`need.needed_by` → `needed_by`,
/// `need.amount_minor` → `amount_yuan`, `enterprise.region_code` → `region_code`), in order,
/// each once, `;`-separated; a field no column feeds is named as the server named it.
pub(super) fn columns_at_fault<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for field in fields {
        let bare = field
            .trim_start_matches("need.")
            .trim_start_matches("enterprise.");
        let bare = bare.split_once('[').map_or(bare, |(name, _)| name);
        let column = match bare {
            "amount_minor" => "amount_yuan",
            "consent_to_share" => "consent",
            "name" => "enterprise_name",
            "size" | "region_code" | "industry_code" | "credit_code" | "term_months"
            | "purpose" | "collateral" | "max_rate_bps" | "needed_by" => bare,
            _ => field,
        };
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    columns.join(";")
}
