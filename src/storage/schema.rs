// @generated automatically by Diesel CLI.

diesel::table! {
    /// Special-loan quota allocations. Status: RESERVED -> CONFIRMED (loan disbursed) or RELEASED (quota returns).
    allocations (id) {
        id -> Uuid,
        program_id -> Uuid,
        lender_id -> Uuid,
        enterprise_id -> Uuid,
        /// Referral the loan came through, when there is one.
        referral_id -> Nullable<Uuid>,
        amount_minor -> Int8,
        /// Loan rate; at most programs.rate_cap_bps.
        rate_bps -> Int4,
        term_months -> Int4,
        /// Loan date; inside the program's window, and the designation must be valid on it.
        loan_date -> Date,
        /// RESERVED, CONFIRMED or RELEASED.
        status -> Text,
        /// Estimated interest subsidy: amount x rate x subsidy ratio x term_months / 12, integer arithmetic, rounded half-up to the minor unit.
        subsidy_minor -> Int8,
        /// Enterprise's cost after subsidy, rate x (1 - subsidy ratio), rounded half-up.
        effective_rate_bps -> Int4,
        /// The designation the eligibility decision relied on; NULL when the program requires none.
        designation_id -> Nullable<Uuid>,
        /// List code of designation_id, kept for reporting and explanation.
        designation_list_code -> Nullable<Text>,
        /// Lender's loan reference, set on confirmation; unique per lender.
        loan_reference -> Nullable<Text>,
        /// Disbursement date, set on confirmation together with loan_reference.
        disbursed_on -> Nullable<Date>,
        /// Client idempotency key of the AllocateSpecialLoan call that created it (the replay record is in idempotency_keys).
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        /// When a RESERVED allocation lapses (created_at + the program's reservation_hours): confirmation is refused from then on and the sweeper releases it.
        expires_at -> Timestamptz,
        /// Why a RELEASED allocation was released: RELEASED_BY_CALLER (ReleaseAllocation) or LAPSED (its reservation time ran out); NULL otherwise (and on rows the previous release released).
        release_reason -> Nullable<Text>,
    }
}

diesel::table! {
    /// Append-only record of every mutating call (who, which RPC, which entity, when), written in the call's own transaction.
    audit_log (id) {
        id -> Int8,
        /// Credential that made the call; NULL for actions without one (CLI bootstrap, background sweeper).
        principal_id -> Nullable<Uuid>,
        /// OPERATOR, PORTAL, LENDER, or SYSTEM for the CLI and background tasks.
        principal_role -> Text,
        /// Lender the principal acts as (LENDER credentials); NULL otherwise.
        lender_id -> Nullable<Uuid>,
        /// RPC (e.g. finmatch.v1.LenderService/CreateProduct) or CLI/background action name.
        rpc -> Text,
        /// Kind of entity changed, e.g. need, referral, allocation.
        entity_type -> Text,
        /// Id of the entity changed, as text.
        entity_id -> Text,
        /// Call-specific data needed to understand the change; never tokens.
        detail -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Hash chain over audit_log in id order: hash = sha256(previous hash || the row rendered as storage::audit renders it); the first row chains from 32 zero bytes. finmatch audit verify recomputes it.
    audit_seals (audit_id) {
        /// The audit_log row sealed (no foreign key: a seal outlives a deleted row, which is how the deletion is found).
        audit_id -> Int8,
        /// The chain's SHA-256 through this row.
        hash -> Bytea,
        sealed_at -> Timestamptz,
    }
}

diesel::table! {
    /// Bearer-token credentials. Only the SHA-256 of the token is stored; every call looks its token up here, so revocation takes effect at once on every replica.
    credentials (id) {
        id -> Uuid,
        /// OPERATOR, PORTAL or LENDER.
        role -> Text,
        /// The lender a LENDER credential acts as (set exactly when role = LENDER); the source of tenant identity.
        lender_id -> Nullable<Uuid>,
        /// Human-readable name of the holder, for audit and revocation.
        label -> Text,
        /// SHA-256 digest (32 bytes) of the bearer token; the token itself is never stored.
        token_hash -> Bytea,
        created_at -> Timestamptz,
        /// When the credential was revoked; NULL = valid.
        revoked_at -> Nullable<Timestamptz>,
        /// When the credential stops being valid, as if revoked then; NULL = no expiry.
        expires_at -> Nullable<Timestamptz>,
        /// Subject (RFC 4514, as finmatch renders it) of the client certificate the credential is bound to; NULL = any connection.
        certificate_subject -> Nullable<Text>,
    }
}

diesel::table! {
    /// Memberships of official enterprise lists (e.g. NATIONAL_KEY_SUPPLY) with validity dates. Rows are revoked, never deleted, so decisions that relied on them stay explainable.
    designations (id) {
        id -> Uuid,
        enterprise_id -> Uuid,
        /// List code; lists are data, not an enum (^[A-Z][A-Z0-9_]{1,63}$).
        list_code -> Text,
        /// First day the membership is valid.
        granted_on -> Date,
        /// Last day the membership is valid (inclusive); NULL = open-ended.
        expires_on -> Nullable<Date>,
        /// Reference of the official document that granted the membership.
        reference -> Text,
        /// When an operator revoked the designation; NULL = in force. At most one unrevoked row per enterprise and list.
        revoked_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Loan outcomes recorded by lenders on approved referrals. Partial funding is allowed; needs.funded_minor is their sum.
    disbursements (id) {
        id -> Uuid,
        referral_id -> Uuid,
        need_id -> Uuid,
        lender_id -> Uuid,
        /// The lender's own loan reference; unique per lender, the natural idempotency key of RecordDisbursement.
        loan_reference -> Text,
        amount_minor -> Int8,
        rate_bps -> Int4,
        term_months -> Int4,
        /// Date the loan was paid out.
        disbursed_on -> Date,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Enterprises registered by the bureau; the owners of financing needs.
    enterprises (id) {
        id -> Uuid,
        /// Unified social credit code (GB 32100-2015), 18 characters; the check character is verified by the application.
        credit_code -> Text,
        name -> Text,
        /// 6-digit administrative division code (GB/T 2260), e.g. 421300.
        region_code -> Text,
        /// GB/T 4754 industry code: section letter plus up to 4 digits, e.g. C27, C2720.
        industry_code -> Text,
        /// MICRO, SMALL, MEDIUM or LARGE (ordered).
        size -> Text,
        /// Industrial enterprise above designated size (规上).
        above_designated_size -> Bool,
        employees -> Int4,
        /// Annual revenue in minor units (fen).
        annual_revenue_minor -> Int8,
        /// Personal data: shown to a lender only for needs whose owner consented to sharing.
        contact_name -> Text,
        /// Personal data: shown to a lender only for needs whose owner consented to sharing; NULL when unknown.
        contact_phone -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// Replay records of mutating RPCs called with an idempotency key, written in the same transaction as the effect: same key and same request -> the stored response; same key and a different request -> IDEMPOTENCY_KEY_REUSED.
    idempotency_keys (principal_id, rpc, key) {
        /// Credential that made the call; keys are scoped per caller.
        principal_id -> Uuid,
        /// Full RPC name, e.g. finmatch.v1.FinancingService/SubmitNeed.
        rpc -> Text,
        /// Client-chosen idempotency key.
        key -> Text,
        /// Digest of the canonical request, to detect a key reused with a different request.
        request_hash -> Bytea,
        /// Encoded first response, returned on replay; NULL while the claiming transaction has not stored it yet.
        response -> Nullable<Bytea>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Partner banks. A LENDER credential is bound to one row here.
    lenders (id) {
        id -> Uuid,
        name -> Text,
        /// POLICY, STATE_OWNED, JOINT_STOCK, CITY_COMMERCIAL, RURAL or OTHER.
        kind -> Text,
        /// Administrative division codes (or code prefixes) the lender serves; products with no region_prefixes inherit these.
        region_codes -> Array<Nullable<Text>>,
        /// An inactive lender receives no new referrals.
        active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// Financing needs (融资需求) of enterprises. Status moves forward only: SUBMITTED -> ROUTED -> APPROVED -> FUNDED, or UNMATCHED, WITHDRAWN, EXPIRED. Open = SUBMITTED, ROUTED, APPROVED.
    needs (id) {
        id -> Uuid,
        enterprise_id -> Uuid,
        /// Amount requested, minor units (fen).
        amount_minor -> Int8,
        term_months -> Int4,
        /// WORKING_CAPITAL, PAYROLL, RAW_MATERIALS, EQUIPMENT, EXPANSION, CONVERSION or REFINANCING; an enterprise has at most one open need per purpose.
        purpose -> Text,
        /// Collateral kinds offered.
        collateral -> Array<Nullable<Text>>,
        /// Highest annual rate the enterprise accepts; NULL = no limit.
        max_rate_bps -> Nullable<Int4>,
        /// Date the money is needed by; an open need past it becomes EXPIRED.
        needed_by -> Date,
        /// Owner's consent to share the need and contact data with lenders; without it the need is stored but never routed.
        consent_to_share -> Bool,
        /// How the need arrived: SELF, BUREAU or BANK_REFERRAL.
        channel -> Text,
        note -> Text,
        status -> Text,
        /// Sum of disbursements recorded against the need; never exceeds amount_minor, equals it when FUNDED.
        funded_minor -> Int8,
        /// Referrals created for the need so far; routing stops at the policy limit and the need becomes UNMATCHED.
        routing_attempts -> Int4,
        /// Client idempotency key the need was created under (SubmitNeed or an ImportNeeds item); unique per creating credential.
        idempotency_key -> Nullable<Text>,
        /// Credential that created the need.
        created_by -> Uuid,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// Referrals routed to a product per day. Routing increments it with a conditional upsert (… ON CONFLICT DO UPDATE … WHERE referrals < daily_capacity) in the routing transaction, so concurrent submits on any replica never exceed products.daily_capacity.
    product_daily_usage (product_id, day) {
        product_id -> Uuid,
        /// Calendar day the referrals were created on.
        day -> Date,
        /// Referrals created for the product on that day.
        referrals -> Int4,
    }
}

diesel::table! {
    /// Loan products of a lender, the unit the matching engine scores and routes to.
    products (id) {
        id -> Uuid,
        lender_id -> Uuid,
        name -> Text,
        min_amount_minor -> Int8,
        max_amount_minor -> Int8,
        min_term_months -> Int4,
        max_term_months -> Int4,
        /// GB/T 4754 code prefixes served; empty = all industries.
        industry_prefixes -> Array<Nullable<Text>>,
        /// Administrative division code prefixes served; empty = the lender's region_codes.
        region_prefixes -> Array<Nullable<Text>>,
        /// Collateral kinds accepted (CREDIT means unsecured); a need must offer at least one.
        collateral_accepted -> Array<Nullable<Text>>,
        /// Smallest enterprise size served (MICRO < SMALL < MEDIUM < LARGE).
        min_size -> Text,
        min_rate_bps -> Int4,
        max_rate_bps -> Int4,
        /// List codes of which the enterprise must hold any one; empty = no requirement.
        required_designations -> Array<Nullable<Text>>,
        /// Maximum referrals per calendar day, enforced atomically through product_daily_usage.
        daily_capacity -> Int4,
        /// Hours the lender has to decide a referral before it expires (sets referrals.sla_deadline).
        response_sla_hours -> Int4,
        active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// An enterprise's standing in a program, locked and updated in the allocation transaction: its bank binding (the one-bank rule) and its live amount (the per-enterprise cap).
    program_enterprises (program_id, enterprise_id) {
        program_id -> Uuid,
        enterprise_id -> Uuid,
        /// The lender the enterprise is bound to (its first allocation's lender); enforced for later allocations when programs.one_bank_per_enterprise.
        lender_id -> Uuid,
        /// Sum of the enterprise's RESERVED and CONFIRMED allocations in the program.
        live_minor -> Int8,
    }
}

diesel::table! {
    /// Per-lender share of a program's quota (the designated banks) and its live balance. A lender without a row has no quota.
    program_lender_quotas (program_id, lender_id) {
        program_id -> Uuid,
        lender_id -> Uuid,
        /// Lender's quota; never below reserved_minor + confirmed_minor.
        quota_minor -> Int8,
        /// Sum of the lender's RESERVED allocations in the program.
        reserved_minor -> Int8,
        /// Sum of the lender's CONFIRMED allocations in the program.
        confirmed_minor -> Int8,
    }
}

diesel::table! {
    /// Special-loan programs: a quota of preferential loans with eligibility and pricing rules (e.g. the 2020 PBoC special re-lending).
    programs (id) {
        id -> Uuid,
        /// Short unique code of the program, e.g. PBOC_2020_RELENDING.
        code -> Text,
        name -> Text,
        /// Total amount that may be allocated (reserved + confirmed), minor units.
        total_quota_minor -> Int8,
        /// Highest loan rate allowed, e.g. 315 (1-year LPR 415 minus 100 bp).
        rate_cap_bps -> Int4,
        /// Share of interest paid by the treasury, 0..10000 (5000 = 50%).
        subsidy_ratio_bps -> Int4,
        /// Cap on the enterprise's cost after subsidy, rate x (1 - subsidy ratio); NULL = no cap.
        max_effective_rate_bps -> Nullable<Int4>,
        /// Cap on one enterprise's live (reserved + confirmed) allocations; NULL = no cap.
        per_enterprise_cap_minor -> Nullable<Int8>,
        /// Longest loan term allowed.
        max_term_months -> Int4,
        /// List codes of which the enterprise must hold any one valid on the loan date; empty = no requirement.
        required_designations -> Array<Nullable<Text>>,
        /// First eligible loan date (inclusive).
        loan_date_from -> Date,
        /// Last eligible loan date (inclusive); NULL = open-ended.
        loan_date_to -> Nullable<Date>,
        /// All of an enterprise's allocations in the program go through one lender (program_enterprises.lender_id).
        one_bank_per_enterprise -> Bool,
        /// Sum of RESERVED allocations; maintained in the allocation transaction.
        reserved_minor -> Int8,
        /// Sum of CONFIRMED allocations; maintained in the allocation transaction.
        confirmed_minor -> Int8,
        /// Sum of program_lender_quotas.quota_minor; maintained by SetLenderQuota so lender quotas never exceed the total.
        lender_quota_sum_minor -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        /// How long a RESERVED allocation holds quota before the sweeper releases it, in hours (1 to 8760).
        reservation_hours -> Int4,
    }
}

diesel::table! {
    /// Append-only log of referral changes, written as an outbox: the source of WatchReferrals. A writer, in the transaction that changes the referral, inserts referral_id, need_id, lender_id (those of the referral), kind, status (after the change) and detail, and leaves cursor, delivery_cursor and created_at to their defaults; it sends no notification. The relay polls for committed rows without delivery_cursor (index referral_events_undelivered_idx), assigns delivery_cursor and notifies finmatch_referral_deliveries.
    referral_events (cursor) {
        /// Insertion order (identity, assigned at insert, so not commit order); the relay works through undelivered rows in this order. Not shown to clients.
        cursor -> Int8,
        referral_id -> Uuid,
        /// Lender of the referral (the stream is per lender).
        lender_id -> Uuid,
        need_id -> Uuid,
        /// CREATED, ACKNOWLEDGED, INFO_REQUESTED, APPROVED, DECLINED, DISBURSED, EXPIRED or CANCELLED.
        kind -> Text,
        /// Referral status after the event.
        status -> Text,
        /// Event-specific data (e.g. decline reason, approved terms, loan reference).
        detail -> Jsonb,
        created_at -> Timestamptz,
        /// The cursor WatchReferrals shows and resumes from. NULL until the relay, which sees only committed rows, assigns it: greatest(last assigned + 1, cursor), so values only grow in the order they are assigned and equal cursor for events committed in insertion order (cursors of the previous release stay valid). Never changes once set.
        delivery_cursor -> Nullable<Int8>,
    }
}

diesel::table! {
    /// One need routed to one lender product. Status: PENDING -> ACKNOWLEDGED -> (INFO_REQUESTED <-> ACKNOWLEDGED) -> APPROVED -> DISBURSED, or DECLINED, EXPIRED, CANCELLED. Open = PENDING, ACKNOWLEDGED, INFO_REQUESTED, APPROVED.
    referrals (id) {
        id -> Uuid,
        need_id -> Uuid,
        /// Lender the need was routed to (denormalised from the product for tenant-scoped queries); tried at most once per need.
        lender_id -> Uuid,
        product_id -> Uuid,
        status -> Text,
        /// Matching score 0..1000 at routing time.
        score -> Int4,
        /// The score explanation: JSON array of score factors (name, value_bps, weight_bps, points, note).
        factors -> Jsonb,
        /// Deadline for the lender's decision; an undecided referral past it is EXPIRED by the sweeper.
        sla_deadline -> Timestamptz,
        /// Set exactly when DECLINED: OUTSIDE_APPETITE, INSUFFICIENT_COLLATERAL, CREDIT_HISTORY, INCOMPLETE_INFORMATION, CAPACITY or OTHER.
        decline_reason -> Nullable<Text>,
        /// Lender's free-text explanation of a decline.
        decline_note -> Nullable<Text>,
        /// Lender's latest request for information to the bureau (status INFO_REQUESTED).
        info_request -> Nullable<Text>,
        /// Approved amount; set together with approved_rate_bps and approved_term_months on approval.
        approved_amount_minor -> Nullable<Int8>,
        approved_rate_bps -> Nullable<Int4>,
        approved_term_months -> Nullable<Int4>,
        /// Time of the lender's first answer (acknowledge, info request or decision); for responsiveness statistics.
        first_response_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// Leases of single-replica background roles ('referral_events': the event relay). The holder renews expires_at (database clock) while it works and in every batch it writes; another replica takes a lease over only after it expired. A row lock, not an advisory lock, so it holds on any PostgreSQL topology.
    relay_leases (name) {
        name -> Text,
        /// Random id of the server process holding the lease (new at every start).
        holder -> Uuid,
        /// The lease is free after this instant unless renewed.
        expires_at -> Timestamptz,
        /// When the current holder took the lease.
        acquired_at -> Timestamptz,
    }
}

diesel::joinable!(allocations -> enterprises (enterprise_id));
diesel::joinable!(allocations -> lenders (lender_id));
diesel::joinable!(allocations -> programs (program_id));
diesel::joinable!(allocations -> referrals (referral_id));
diesel::joinable!(credentials -> lenders (lender_id));
diesel::joinable!(designations -> enterprises (enterprise_id));
diesel::joinable!(disbursements -> lenders (lender_id));
diesel::joinable!(disbursements -> needs (need_id));
diesel::joinable!(needs -> credentials (created_by));
diesel::joinable!(needs -> enterprises (enterprise_id));
diesel::joinable!(product_daily_usage -> products (product_id));
diesel::joinable!(products -> lenders (lender_id));
diesel::joinable!(program_enterprises -> enterprises (enterprise_id));
diesel::joinable!(program_enterprises -> lenders (lender_id));
diesel::joinable!(program_enterprises -> programs (program_id));
diesel::joinable!(program_lender_quotas -> lenders (lender_id));
diesel::joinable!(program_lender_quotas -> programs (program_id));
diesel::joinable!(referrals -> needs (need_id));

diesel::allow_tables_to_appear_in_same_query!(
    allocations,
    audit_log,
    audit_seals,
    credentials,
    designations,
    disbursements,
    enterprises,
    idempotency_keys,
    lenders,
    needs,
    product_daily_usage,
    products,
    program_enterprises,
    program_lender_quotas,
    programs,
    referral_events,
    referrals,
    relay_leases,
);
