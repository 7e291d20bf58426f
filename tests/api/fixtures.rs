//! Rows the API cannot create yet on this branch (needs, referrals, disbursements), inserted with
//! plain SQL so the reporting tests can build a known history. Enterprises, lenders, products and
//! programs are still created through their RPCs.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::helpers::TestApp;

pub struct Fixtures {
    db: tokio_postgres::Client,
}

/// A need as stored, with what the tests vary.
pub struct NeedRow<'a> {
    pub enterprise_id: Uuid,
    pub amount_minor: i64,
    pub purpose: &'a str,
    pub status: &'a str,
    /// None = now.
    pub created_at: Option<DateTime<Utc>>,
}

/// A referral as stored: `answered_after_secs` sets first_response_at that long after creation.
pub struct ReferralRow<'a> {
    pub need_id: Uuid,
    pub lender_id: Uuid,
    pub product_id: Uuid,
    pub status: &'a str,
    pub decline_reason: Option<&'a str>,
    pub approved_amount_minor: Option<i64>,
    pub answered_after_secs: Option<i64>,
}

impl Fixtures {
    pub async fn connect(app: &TestApp) -> Self {
        let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        Self { db }
    }

    /// Inserts a need created by the first credential; FUNDED needs are fully funded.
    pub async fn need(&self, need: NeedRow<'_>) -> Uuid {
        let funded_minor = if need.status == "FUNDED" {
            need.amount_minor
        } else {
            0
        };
        let row = self
            .db
            .query_one(
                "INSERT INTO needs (enterprise_id, amount_minor, term_months, purpose, collateral, \
                     needed_by, consent_to_share, channel, status, funded_minor, created_by, created_at) \
                 VALUES ($1::text::uuid, $2, 12, $3, '{CREDIT}', DATE '2030-12-31', true, 'BUREAU', $4, $5, \
                     (SELECT id FROM credentials ORDER BY created_at LIMIT 1), \
                     coalesce($6::text::timestamptz, now())) \
                 RETURNING id::text",
                &[
                    &need.enterprise_id.to_string(),
                    &need.amount_minor,
                    &need.purpose,
                    &need.status,
                    &funded_minor,
                    &need.created_at.map(|at| at.to_rfc3339()),
                ],
            )
            .await
            .expect("insert a need");
        row.get::<_, String>(0).parse().unwrap()
    }

    pub async fn referral(&self, referral: ReferralRow<'_>) -> Uuid {
        let approved = referral.approved_amount_minor;
        let row = self
            .db
            .query_one(
                "INSERT INTO referrals (need_id, lender_id, product_id, status, score, sla_deadline, \
                     decline_reason, approved_amount_minor, approved_rate_bps, approved_term_months, \
                     first_response_at) \
                 VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid, $4, 700, now() + interval '48 hours', $5, $6, \
                     CASE WHEN $6::bigint IS NULL THEN NULL ELSE 385 END, \
                     CASE WHEN $6::bigint IS NULL THEN NULL ELSE 12 END, \
                     now() + make_interval(secs => $7::bigint)) \
                 RETURNING id::text",
                &[
                    &referral.need_id.to_string(),
                    &referral.lender_id.to_string(),
                    &referral.product_id.to_string(),
                    &referral.status,
                    &referral.decline_reason,
                    &approved,
                    &referral.answered_after_secs,
                ],
            )
            .await
            .expect("insert a referral");
        row.get::<_, String>(0).parse().unwrap()
    }

    pub async fn disbursement(&self, referral_id: Uuid, amount_minor: i64, loan_reference: &str) {
        self.db
            .execute(
                "INSERT INTO disbursements (referral_id, need_id, lender_id, loan_reference, \
                     amount_minor, rate_bps, term_months, disbursed_on) \
                 SELECT id, need_id, lender_id, $2, $3, 385, 12, DATE '2020-03-02' \
                 FROM referrals WHERE id = $1::text::uuid",
                &[&referral_id.to_string(), &loan_reference, &amount_minor],
            )
            .await
            .expect("insert a disbursement");
    }
}
