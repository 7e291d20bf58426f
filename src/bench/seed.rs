//! `finmatch bench seed`: lenders, products and lender credentials through the public API.

use std::path::Path;

use anyhow::{Context, bail};
use futures::StreamExt as _;

use super::client::{Bearer, Channels, SETUP_IN_FLIGHT, authed, refused};
use super::data;
use super::state::{LenderState, ProductState, State};
use crate::proto as pb;
use crate::proto::lender_service_client::LenderServiceClient;

/// Seeds a database that has no lender yet (a rerun on a seeded database is refused: start from
/// a fresh one), and writes the state to `state_path`.
pub async fn seed(
    channels: &Channels,
    operator: &Bearer,
    server: &str,
    lenders: usize,
    products: usize,
    state_path: &Path,
) -> anyhow::Result<State> {
    if lenders < 2 * data::CONTENTION_PAIRS {
        bail!("--lenders must be at least {}", 2 * data::CONTENTION_PAIRS);
    }
    let mut client = LenderServiceClient::new(channels.get(0));
    let existing = client
        .list_lenders(authed(
            pb::ListLendersRequest {
                page_size: 1,
                ..Default::default()
            },
            operator,
        ))
        .await
        .map_err(|s| refused("ListLenders", &s))?
        .into_inner();
    if !existing.lenders.is_empty() {
        bail!(
            "the server's database has lenders already; `bench seed` runs on a fresh database \
             (its figures assume exactly the catalogue it creates)"
        );
    }

    let created: Vec<anyhow::Result<pb::Lender>> = futures::stream::iter(0..lenders)
        .map(|i| {
            let mut client = LenderServiceClient::new(channels.get(i));
            let request = authed(
                pb::CreateLenderRequest {
                    lender: Some(data::lender(i)),
                },
                operator,
            );
            async move {
                client
                    .create_lender(request)
                    .await
                    .map_err(|s| refused(format_args!("CreateLender {i}"), &s))?
                    .into_inner()
                    .lender
                    .context("CreateLender returned no lender")
            }
        })
        .buffered(SETUP_IN_FLIGHT)
        .collect()
        .await;
    let created: Vec<pb::Lender> = created.into_iter().collect::<anyhow::Result<_>>()?;

    // The contention pairs first, then the general catalogue round-robin over the lenders.
    let mut catalogue: Vec<(usize, pb::Product)> = Vec::with_capacity(products);
    for pair in 0..data::CONTENTION_PAIRS {
        let (a, b) = (2 * pair, 2 * pair + 1);
        let [pa, pb_] = data::contention_pair(pair, &created[a].id, &created[b].id);
        catalogue.push((a, pa));
        catalogue.push((b, pb_));
    }
    let mut n = 0;
    while catalogue.len() < products {
        let lender = n % lenders;
        catalogue.push((lender, data::product(&created[lender].id, n)));
        n += 1;
    }
    let made: Vec<anyhow::Result<ProductState>> = futures::stream::iter(catalogue)
        .enumerate()
        .map(|(i, (lender, product))| {
            let mut client = LenderServiceClient::new(channels.get(i));
            let request = authed(
                pb::CreateProductRequest {
                    product: Some(product),
                },
                operator,
            );
            async move {
                let p = client
                    .create_product(request)
                    .await
                    .map_err(|s| refused(format_args!("CreateProduct {i}"), &s))?
                    .into_inner()
                    .product
                    .context("CreateProduct returned no product")?;
                anyhow::Ok(ProductState {
                    id: p.id,
                    lender,
                    min_amount_minor: p.min_amount_minor,
                    max_amount_minor: p.max_amount_minor,
                    min_term_months: p.min_term_months,
                    max_term_months: p.max_term_months,
                    min_rate_bps: p.min_rate_bps,
                    max_rate_bps: p.max_rate_bps,
                })
            }
        })
        .buffered(SETUP_IN_FLIGHT)
        .collect()
        .await;
    let products: Vec<ProductState> = made.into_iter().collect::<anyhow::Result<_>>()?;

    let mut lender_states = Vec::with_capacity(created.len());
    for lender in &created {
        let token = client
            .issue_credential(authed(
                pb::IssueCredentialRequest {
                    role: pb::Role::Lender as i32,
                    lender_id: lender.id.clone(),
                    label: format!("bench {}", lender.name),
                    ..Default::default()
                },
                operator,
            ))
            .await
            .map_err(|s| refused(format_args!("IssueCredential for {}", lender.name), &s))?
            .into_inner()
            .token;
        lender_states.push(LenderState {
            id: lender.id.clone(),
            name: lender.name.clone(),
            token,
        });
    }
    let state = State {
        server: server.to_owned(),
        seeded_at: chrono::Utc::now().to_rfc3339(),
        lenders: lender_states,
        products,
        next_enterprise: 1,
    };
    state.save(state_path)?;
    Ok(state)
}
