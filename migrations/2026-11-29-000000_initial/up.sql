-- finmatch initial data model (DESIGN §1, §4, §6).
--
-- Conventions: ids are uuid; instants timestamptz; calendar dates date; money
-- bigint minor units (*_minor); rates integer basis points (*_bps);
-- enumerations TEXT with CHECK using the canonical upper-case names; arrays
-- text[] NOT NULL DEFAULT '{}' whose elements are never NULL.
-- Every invariant the database can hold by itself is a constraint here; the
-- application validates the same rules at the edge to give field-level errors.

------------------------------------------------------------------------------
-- Helper functions
------------------------------------------------------------------------------

-- CHECK constraints cannot contain subqueries, so array-element rules go
-- through this immutable helper. An empty array passes; a NULL element fails.
CREATE FUNCTION finmatch_all_match(elements text[], pattern text) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT coalesce(bool_and(coalesce(e ~ pattern, false)), true) FROM unnest(elements) AS e $$;
COMMENT ON FUNCTION finmatch_all_match(text[], text) IS
    'True when every element of the array is non-NULL and matches the regular expression (true for an empty array). Used by CHECK constraints on text[] columns.';

-- Keeps updated_at current without relying on every UPDATE to set it; an
-- UPDATE that sets updated_at explicitly keeps its value.
CREATE FUNCTION finmatch_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION finmatch_touch_updated_at() IS
    'BEFORE UPDATE trigger: sets updated_at to now() unless the UPDATE set it itself.';

-- Append-only tables (events, audit) refuse UPDATE and DELETE.
CREATE FUNCTION finmatch_forbid_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
COMMENT ON FUNCTION finmatch_forbid_change() IS
    'BEFORE UPDATE OR DELETE trigger for append-only tables (referral_events, audit_log).';

------------------------------------------------------------------------------
-- Enterprises and designations
------------------------------------------------------------------------------

CREATE TABLE enterprises (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    credit_code text NOT NULL UNIQUE
        CHECK (credit_code ~ '^[0-9A-HJ-NPQRTUWXY]{18}$'),
    name text NOT NULL CHECK (btrim(name) <> ''),
    region_code text NOT NULL CHECK (region_code ~ '^[0-9]{6}$'),
    industry_code text NOT NULL CHECK (industry_code ~ '^[A-T][0-9]{0,4}$'),
    size text NOT NULL CHECK (size IN ('MICRO', 'SMALL', 'MEDIUM', 'LARGE')),
    above_designated_size boolean NOT NULL DEFAULT false,
    employees integer NOT NULL DEFAULT 0 CHECK (employees >= 0),
    annual_revenue_minor bigint NOT NULL DEFAULT 0 CHECK (annual_revenue_minor >= 0),
    contact_name text NOT NULL DEFAULT '',
    contact_phone text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Prefix filters (LIKE '4213%', LIKE 'C27%') need text_pattern_ops.
CREATE INDEX enterprises_region_code_prefix_idx ON enterprises (region_code text_pattern_ops);
CREATE INDEX enterprises_industry_code_prefix_idx ON enterprises (industry_code text_pattern_ops);
CREATE INDEX enterprises_created_at_idx ON enterprises (created_at, id);
CREATE TRIGGER enterprises_touch_updated_at BEFORE UPDATE ON enterprises
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();

COMMENT ON TABLE enterprises IS 'Enterprises registered by the bureau; the owners of financing needs.';
COMMENT ON COLUMN enterprises.credit_code IS 'Unified social credit code (GB 32100-2015), 18 characters; the check character is verified by the application.';
COMMENT ON COLUMN enterprises.region_code IS '6-digit administrative division code (GB/T 2260), e.g. 421300.';
COMMENT ON COLUMN enterprises.industry_code IS 'GB/T 4754 industry code: section letter plus up to 4 digits, e.g. C27, C2720.';
COMMENT ON COLUMN enterprises.size IS 'MICRO, SMALL, MEDIUM or LARGE (ordered).';
COMMENT ON COLUMN enterprises.above_designated_size IS 'Industrial enterprise above designated size (规上).';
COMMENT ON COLUMN enterprises.annual_revenue_minor IS 'Annual revenue in minor units (fen).';
COMMENT ON COLUMN enterprises.contact_name IS 'Personal data: shown to a lender only for needs whose owner consented to sharing.';
COMMENT ON COLUMN enterprises.contact_phone IS 'Personal data: shown to a lender only for needs whose owner consented to sharing; NULL when unknown.';

CREATE TABLE designations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    enterprise_id uuid NOT NULL REFERENCES enterprises (id),
    list_code text NOT NULL CHECK (list_code ~ '^[A-Z][A-Z0-9_]{1,63}$'),
    granted_on date NOT NULL,
    expires_on date,
    reference text NOT NULL DEFAULT '',
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT designations_validity_check CHECK (expires_on >= granted_on),
    -- Target of allocations' composite foreign key (the designation relied on
    -- belongs to the allocation's enterprise and has the recorded list code).
    CONSTRAINT designations_id_enterprise_list_key UNIQUE (id, enterprise_id, list_code)
);
CREATE UNIQUE INDEX designations_one_active_per_list_idx
    ON designations (enterprise_id, list_code) WHERE revoked_at IS NULL;
CREATE INDEX designations_enterprise_id_idx ON designations (enterprise_id, granted_on);
CREATE INDEX designations_active_list_code_idx
    ON designations (list_code, enterprise_id) WHERE revoked_at IS NULL;

COMMENT ON TABLE designations IS 'Memberships of official enterprise lists (e.g. NATIONAL_KEY_SUPPLY) with validity dates. Rows are revoked, never deleted, so decisions that relied on them stay explainable.';
COMMENT ON COLUMN designations.list_code IS 'List code; lists are data, not an enum (^[A-Z][A-Z0-9_]{1,63}$).';
COMMENT ON COLUMN designations.granted_on IS 'First day the membership is valid.';
COMMENT ON COLUMN designations.expires_on IS 'Last day the membership is valid (inclusive); NULL = open-ended.';
COMMENT ON COLUMN designations.reference IS 'Reference of the official document that granted the membership.';
COMMENT ON COLUMN designations.revoked_at IS 'When an operator revoked the designation; NULL = in force. At most one unrevoked row per enterprise and list.';

------------------------------------------------------------------------------
-- Lenders, products, daily capacity, credentials
------------------------------------------------------------------------------

CREATE TABLE lenders (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE CHECK (btrim(name) <> ''),
    kind text NOT NULL
        CHECK (kind IN ('POLICY', 'STATE_OWNED', 'JOINT_STOCK', 'CITY_COMMERCIAL', 'RURAL', 'OTHER')),
    region_codes text[] NOT NULL DEFAULT '{}'
        CHECK (finmatch_all_match(region_codes, '^[0-9]{1,6}$')),
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER lenders_touch_updated_at BEFORE UPDATE ON lenders
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();

COMMENT ON TABLE lenders IS 'Partner banks. A LENDER credential is bound to one row here.';
COMMENT ON COLUMN lenders.kind IS 'POLICY, STATE_OWNED, JOINT_STOCK, CITY_COMMERCIAL, RURAL or OTHER.';
COMMENT ON COLUMN lenders.region_codes IS 'Administrative division codes (or code prefixes) the lender serves; products with no region_prefixes inherit these.';
COMMENT ON COLUMN lenders.active IS 'An inactive lender receives no new referrals.';

CREATE TABLE products (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lender_id uuid NOT NULL REFERENCES lenders (id),
    name text NOT NULL CHECK (btrim(name) <> ''),
    min_amount_minor bigint NOT NULL,
    max_amount_minor bigint NOT NULL,
    min_term_months integer NOT NULL,
    max_term_months integer NOT NULL,
    industry_prefixes text[] NOT NULL DEFAULT '{}'
        CHECK (finmatch_all_match(industry_prefixes, '^[A-T][0-9]{0,4}$')),
    region_prefixes text[] NOT NULL DEFAULT '{}'
        CHECK (finmatch_all_match(region_prefixes, '^[0-9]{1,6}$')),
    collateral_accepted text[] NOT NULL DEFAULT '{}'
        CHECK (finmatch_all_match(collateral_accepted,
            '^(CREDIT|GUARANTEE|REAL_ESTATE|EQUIPMENT|RECEIVABLES|IP_PLEDGE|INVENTORY)$')),
    min_size text NOT NULL DEFAULT 'MICRO' CHECK (min_size IN ('MICRO', 'SMALL', 'MEDIUM', 'LARGE')),
    min_rate_bps integer NOT NULL,
    max_rate_bps integer NOT NULL,
    required_designations text[] NOT NULL DEFAULT '{}'
        CHECK (finmatch_all_match(required_designations, '^[A-Z][A-Z0-9_]{1,63}$')),
    daily_capacity integer NOT NULL CHECK (daily_capacity > 0),
    response_sla_hours integer NOT NULL CHECK (response_sla_hours > 0),
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_amount_range_check CHECK (0 < min_amount_minor AND min_amount_minor <= max_amount_minor),
    CONSTRAINT products_term_range_check CHECK (0 < min_term_months AND min_term_months <= max_term_months),
    CONSTRAINT products_rate_range_check CHECK (0 <= min_rate_bps AND min_rate_bps <= max_rate_bps),
    CONSTRAINT products_lender_id_name_key UNIQUE (lender_id, name),
    -- Target of composite foreign keys proving a referral's product belongs to its lender.
    CONSTRAINT products_id_lender_id_key UNIQUE (id, lender_id)
);
CREATE TRIGGER products_touch_updated_at BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();

COMMENT ON TABLE products IS 'Loan products of a lender, the unit the matching engine scores and routes to.';
COMMENT ON COLUMN products.industry_prefixes IS 'GB/T 4754 code prefixes served; empty = all industries.';
COMMENT ON COLUMN products.region_prefixes IS 'Administrative division code prefixes served; empty = the lender''s region_codes.';
COMMENT ON COLUMN products.collateral_accepted IS 'Collateral kinds accepted (CREDIT means unsecured); a need must offer at least one.';
COMMENT ON COLUMN products.min_size IS 'Smallest enterprise size served (MICRO < SMALL < MEDIUM < LARGE).';
COMMENT ON COLUMN products.required_designations IS 'List codes of which the enterprise must hold any one; empty = no requirement.';
COMMENT ON COLUMN products.daily_capacity IS 'Maximum referrals per calendar day, enforced atomically through product_daily_usage.';
COMMENT ON COLUMN products.response_sla_hours IS 'Hours the lender has to decide a referral before it expires (sets referrals.sla_deadline).';

CREATE TABLE product_daily_usage (
    product_id uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    day date NOT NULL,
    referrals integer NOT NULL DEFAULT 0 CHECK (referrals >= 0),
    PRIMARY KEY (product_id, day)
);

COMMENT ON TABLE product_daily_usage IS 'Referrals routed to a product per day. Routing increments it with a conditional upsert (… ON CONFLICT DO UPDATE … WHERE referrals < daily_capacity) in the routing transaction, so concurrent submits on any replica never exceed products.daily_capacity.';
COMMENT ON COLUMN product_daily_usage.day IS 'Calendar day the referrals were created on.';
COMMENT ON COLUMN product_daily_usage.referrals IS 'Referrals created for the product on that day.';

CREATE TABLE credentials (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    role text NOT NULL CHECK (role IN ('OPERATOR', 'PORTAL', 'LENDER')),
    lender_id uuid REFERENCES lenders (id),
    label text NOT NULL CHECK (btrim(label) <> ''),
    token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT credentials_lender_binding_check CHECK ((role = 'LENDER') = (lender_id IS NOT NULL))
);
CREATE INDEX credentials_lender_id_idx ON credentials (lender_id) WHERE lender_id IS NOT NULL;

COMMENT ON TABLE credentials IS 'Bearer-token credentials. Only the SHA-256 of the token is stored; every call looks its token up here, so revocation takes effect at once on every replica.';
COMMENT ON COLUMN credentials.role IS 'OPERATOR, PORTAL or LENDER.';
COMMENT ON COLUMN credentials.lender_id IS 'The lender a LENDER credential acts as (set exactly when role = LENDER); the source of tenant identity.';
COMMENT ON COLUMN credentials.label IS 'Human-readable name of the holder, for audit and revocation.';
COMMENT ON COLUMN credentials.token_hash IS 'SHA-256 digest (32 bytes) of the bearer token; the token itself is never stored.';
COMMENT ON COLUMN credentials.revoked_at IS 'When the credential was revoked; NULL = valid.';

------------------------------------------------------------------------------
-- Financing needs, referrals, events, disbursements
------------------------------------------------------------------------------

CREATE TABLE needs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    enterprise_id uuid NOT NULL REFERENCES enterprises (id),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    term_months integer NOT NULL CHECK (term_months > 0),
    purpose text NOT NULL CHECK (purpose IN
        ('WORKING_CAPITAL', 'PAYROLL', 'RAW_MATERIALS', 'EQUIPMENT', 'EXPANSION', 'CONVERSION', 'REFINANCING')),
    collateral text[] NOT NULL DEFAULT '{}'
        CHECK (finmatch_all_match(collateral,
            '^(CREDIT|GUARANTEE|REAL_ESTATE|EQUIPMENT|RECEIVABLES|IP_PLEDGE|INVENTORY)$')),
    max_rate_bps integer CHECK (max_rate_bps >= 0),
    needed_by date NOT NULL,
    consent_to_share boolean NOT NULL DEFAULT false,
    channel text NOT NULL CHECK (channel IN ('SELF', 'BUREAU', 'BANK_REFERRAL')),
    note text NOT NULL DEFAULT '',
    status text NOT NULL DEFAULT 'SUBMITTED' CHECK (status IN
        ('SUBMITTED', 'ROUTED', 'APPROVED', 'FUNDED', 'UNMATCHED', 'WITHDRAWN', 'EXPIRED')),
    funded_minor bigint NOT NULL DEFAULT 0,
    routing_attempts integer NOT NULL DEFAULT 0 CHECK (routing_attempts >= 0),
    idempotency_key text CHECK (idempotency_key <> ''),
    created_by uuid NOT NULL REFERENCES credentials (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- No need is funded beyond its amount, by any interleaving.
    CONSTRAINT needs_funded_within_amount_check CHECK (0 <= funded_minor AND funded_minor <= amount_minor),
    CONSTRAINT needs_funded_status_check CHECK (status <> 'FUNDED' OR funded_minor = amount_minor)
);
-- One open need per enterprise and purpose (the duplicate check of DESIGN §1).
CREATE UNIQUE INDEX needs_one_open_per_purpose_idx
    ON needs (enterprise_id, purpose) WHERE status IN ('SUBMITTED', 'ROUTED', 'APPROVED');
-- A caller's idempotency key names at most one need (batch imports insert
-- with ON CONFLICT DO NOTHING on it).
CREATE UNIQUE INDEX needs_created_by_idempotency_key_idx
    ON needs (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX needs_enterprise_id_created_at_idx ON needs (enterprise_id, created_at, id);
CREATE INDEX needs_status_created_at_idx ON needs (status, created_at, id);
CREATE INDEX needs_created_at_idx ON needs (created_at, id);
-- The expiry sweep: open needs whose needed_by has passed.
CREATE INDEX needs_open_needed_by_idx
    ON needs (needed_by) WHERE status IN ('SUBMITTED', 'ROUTED', 'APPROVED');
CREATE TRIGGER needs_touch_updated_at BEFORE UPDATE ON needs
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();

COMMENT ON TABLE needs IS 'Financing needs (融资需求) of enterprises. Status moves forward only: SUBMITTED -> ROUTED -> APPROVED -> FUNDED, or UNMATCHED, WITHDRAWN, EXPIRED. Open = SUBMITTED, ROUTED, APPROVED.';
COMMENT ON COLUMN needs.amount_minor IS 'Amount requested, minor units (fen).';
COMMENT ON COLUMN needs.purpose IS 'WORKING_CAPITAL, PAYROLL, RAW_MATERIALS, EQUIPMENT, EXPANSION, CONVERSION or REFINANCING; an enterprise has at most one open need per purpose.';
COMMENT ON COLUMN needs.collateral IS 'Collateral kinds offered.';
COMMENT ON COLUMN needs.max_rate_bps IS 'Highest annual rate the enterprise accepts; NULL = no limit.';
COMMENT ON COLUMN needs.needed_by IS 'Date the money is needed by; an open need past it becomes EXPIRED.';
COMMENT ON COLUMN needs.consent_to_share IS 'Owner''s consent to share the need and contact data with lenders; without it the need is stored but never routed.';
COMMENT ON COLUMN needs.channel IS 'How the need arrived: SELF, BUREAU or BANK_REFERRAL.';
COMMENT ON COLUMN needs.funded_minor IS 'Sum of disbursements recorded against the need; never exceeds amount_minor, equals it when FUNDED.';
COMMENT ON COLUMN needs.routing_attempts IS 'Referrals created for the need so far; routing stops at the policy limit and the need becomes UNMATCHED.';
COMMENT ON COLUMN needs.idempotency_key IS 'Client idempotency key the need was created under (SubmitNeed or an ImportNeeds item); unique per creating credential.';
COMMENT ON COLUMN needs.created_by IS 'Credential that created the need.';

CREATE TABLE referrals (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    need_id uuid NOT NULL REFERENCES needs (id),
    lender_id uuid NOT NULL REFERENCES lenders (id),
    product_id uuid NOT NULL REFERENCES products (id),
    status text NOT NULL DEFAULT 'PENDING' CHECK (status IN
        ('PENDING', 'ACKNOWLEDGED', 'INFO_REQUESTED', 'APPROVED', 'DISBURSED', 'DECLINED', 'EXPIRED', 'CANCELLED')),
    score integer NOT NULL CHECK (score BETWEEN 0 AND 1000),
    factors jsonb NOT NULL DEFAULT '[]',
    sla_deadline timestamptz NOT NULL,
    decline_reason text CHECK (decline_reason IN
        ('OUTSIDE_APPETITE', 'INSUFFICIENT_COLLATERAL', 'CREDIT_HISTORY', 'INCOMPLETE_INFORMATION', 'CAPACITY', 'OTHER')),
    decline_note text,
    info_request text,
    approved_amount_minor bigint CHECK (approved_amount_minor > 0),
    approved_rate_bps integer CHECK (approved_rate_bps >= 0),
    approved_term_months integer CHECK (approved_term_months > 0),
    first_response_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- A lender is tried at most once per need.
    CONSTRAINT referrals_need_id_lender_id_key UNIQUE (need_id, lender_id),
    -- Target of composite foreign keys from referral_events and disbursements.
    CONSTRAINT referrals_id_need_id_lender_id_key UNIQUE (id, need_id, lender_id),
    -- The product belongs to the referral's lender.
    CONSTRAINT referrals_product_lender_fkey FOREIGN KEY (product_id, lender_id)
        REFERENCES products (id, lender_id),
    CONSTRAINT referrals_declined_has_reason_check CHECK ((status = 'DECLINED') = (decline_reason IS NOT NULL)),
    CONSTRAINT referrals_approval_complete_check CHECK (
        (approved_amount_minor IS NULL) = (approved_rate_bps IS NULL)
        AND (approved_amount_minor IS NULL) = (approved_term_months IS NULL)),
    CONSTRAINT referrals_approved_has_terms_check CHECK (
        status NOT IN ('APPROVED', 'DISBURSED') OR approved_amount_minor IS NOT NULL)
);
CREATE INDEX referrals_lender_id_status_idx ON referrals (lender_id, status);
CREATE INDEX referrals_lender_id_created_at_idx ON referrals (lender_id, created_at, id);
CREATE INDEX referrals_product_id_idx ON referrals (product_id);
-- The SLA sweeper: undecided referrals by deadline (claimed FOR UPDATE SKIP LOCKED).
CREATE INDEX referrals_undecided_sla_deadline_idx
    ON referrals (sla_deadline) WHERE status IN ('PENDING', 'ACKNOWLEDGED', 'INFO_REQUESTED');
CREATE TRIGGER referrals_touch_updated_at BEFORE UPDATE ON referrals
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();

COMMENT ON TABLE referrals IS 'One need routed to one lender product. Status: PENDING -> ACKNOWLEDGED -> (INFO_REQUESTED <-> ACKNOWLEDGED) -> APPROVED -> DISBURSED, or DECLINED, EXPIRED, CANCELLED. Open = PENDING, ACKNOWLEDGED, INFO_REQUESTED, APPROVED.';
COMMENT ON COLUMN referrals.lender_id IS 'Lender the need was routed to (denormalised from the product for tenant-scoped queries); tried at most once per need.';
COMMENT ON COLUMN referrals.score IS 'Matching score 0..1000 at routing time.';
COMMENT ON COLUMN referrals.factors IS 'The score explanation: JSON array of score factors (name, value_bps, weight_bps, points, note).';
COMMENT ON COLUMN referrals.sla_deadline IS 'Deadline for the lender''s decision; an undecided referral past it is EXPIRED by the sweeper.';
COMMENT ON COLUMN referrals.decline_reason IS 'Set exactly when DECLINED: OUTSIDE_APPETITE, INSUFFICIENT_COLLATERAL, CREDIT_HISTORY, INCOMPLETE_INFORMATION, CAPACITY or OTHER.';
COMMENT ON COLUMN referrals.decline_note IS 'Lender''s free-text explanation of a decline.';
COMMENT ON COLUMN referrals.info_request IS 'Lender''s latest request for information to the bureau (status INFO_REQUESTED).';
COMMENT ON COLUMN referrals.approved_amount_minor IS 'Approved amount; set together with approved_rate_bps and approved_term_months on approval.';
COMMENT ON COLUMN referrals.first_response_at IS 'Time of the lender''s first answer (acknowledge, info request or decision); for responsiveness statistics.';

CREATE TABLE referral_events (
    cursor bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    referral_id uuid NOT NULL REFERENCES referrals (id),
    lender_id uuid NOT NULL REFERENCES lenders (id),
    need_id uuid NOT NULL REFERENCES needs (id),
    kind text NOT NULL CHECK (kind IN
        ('CREATED', 'ACKNOWLEDGED', 'INFO_REQUESTED', 'APPROVED', 'DECLINED', 'DISBURSED', 'EXPIRED', 'CANCELLED')),
    status text NOT NULL CHECK (status IN
        ('PENDING', 'ACKNOWLEDGED', 'INFO_REQUESTED', 'APPROVED', 'DISBURSED', 'DECLINED', 'EXPIRED', 'CANCELLED')),
    detail jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    -- lender_id and need_id are those of the referral.
    CONSTRAINT referral_events_referral_fkey FOREIGN KEY (referral_id, need_id, lender_id)
        REFERENCES referrals (id, need_id, lender_id)
);
CREATE INDEX referral_events_lender_id_cursor_idx ON referral_events (lender_id, cursor);
CREATE INDEX referral_events_referral_id_cursor_idx ON referral_events (referral_id, cursor);

-- Wakes WatchReferrals streams on every replica; the payload only says where
-- to look, the rows are read from the table.
CREATE FUNCTION finmatch_notify_referral_event() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('finmatch_referral_events',
        json_build_object('lender_id', NEW.lender_id, 'cursor', NEW.cursor)::text);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION finmatch_notify_referral_event() IS
    'AFTER INSERT trigger on referral_events: NOTIFY finmatch_referral_events with {"lender_id": uuid, "cursor": bigint}, delivered at commit.';
CREATE TRIGGER referral_events_notify AFTER INSERT ON referral_events
    FOR EACH ROW EXECUTE FUNCTION finmatch_notify_referral_event();
CREATE TRIGGER referral_events_append_only BEFORE UPDATE OR DELETE ON referral_events
    FOR EACH ROW EXECUTE FUNCTION finmatch_forbid_change();

COMMENT ON TABLE referral_events IS 'Append-only log of referral changes; the source of WatchReferrals. Each insert notifies channel finmatch_referral_events.';
COMMENT ON COLUMN referral_events.cursor IS 'Monotonically increasing position; WatchReferrals resumes after a cursor. Identity values are assigned at insert, so a reader must allow for a lower cursor committing after a higher one.';
COMMENT ON COLUMN referral_events.lender_id IS 'Lender of the referral (the stream is per lender).';
COMMENT ON COLUMN referral_events.kind IS 'CREATED, ACKNOWLEDGED, INFO_REQUESTED, APPROVED, DECLINED, DISBURSED, EXPIRED or CANCELLED.';
COMMENT ON COLUMN referral_events.status IS 'Referral status after the event.';
COMMENT ON COLUMN referral_events.detail IS 'Event-specific data (e.g. decline reason, approved terms, loan reference).';

CREATE TABLE disbursements (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    referral_id uuid NOT NULL REFERENCES referrals (id),
    need_id uuid NOT NULL REFERENCES needs (id),
    lender_id uuid NOT NULL REFERENCES lenders (id),
    loan_reference text NOT NULL CHECK (btrim(loan_reference) <> ''),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    rate_bps integer NOT NULL CHECK (rate_bps >= 0),
    term_months integer NOT NULL CHECK (term_months > 0),
    disbursed_on date NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The lender's own loan reference is unique per lender: the natural idempotency key.
    CONSTRAINT disbursements_lender_id_loan_reference_key UNIQUE (lender_id, loan_reference),
    CONSTRAINT disbursements_referral_fkey FOREIGN KEY (referral_id, need_id, lender_id)
        REFERENCES referrals (id, need_id, lender_id)
);
CREATE INDEX disbursements_referral_id_idx ON disbursements (referral_id);
CREATE INDEX disbursements_need_id_idx ON disbursements (need_id);
CREATE INDEX disbursements_disbursed_on_idx ON disbursements (disbursed_on);

COMMENT ON TABLE disbursements IS 'Loan outcomes recorded by lenders on approved referrals. Partial funding is allowed; needs.funded_minor is their sum.';
COMMENT ON COLUMN disbursements.loan_reference IS 'The lender''s own loan reference; unique per lender, the natural idempotency key of RecordDisbursement.';
COMMENT ON COLUMN disbursements.disbursed_on IS 'Date the loan was paid out.';

------------------------------------------------------------------------------
-- Special-loan programs
------------------------------------------------------------------------------

CREATE TABLE programs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name text NOT NULL CHECK (btrim(name) <> ''),
    total_quota_minor bigint NOT NULL CHECK (total_quota_minor > 0),
    rate_cap_bps integer NOT NULL CHECK (rate_cap_bps >= 0),
    subsidy_ratio_bps integer NOT NULL DEFAULT 0 CHECK (subsidy_ratio_bps BETWEEN 0 AND 10000),
    max_effective_rate_bps integer CHECK (max_effective_rate_bps >= 0),
    per_enterprise_cap_minor bigint CHECK (per_enterprise_cap_minor > 0),
    max_term_months integer NOT NULL CHECK (max_term_months > 0),
    required_designations text[] NOT NULL DEFAULT '{}'
        CHECK (finmatch_all_match(required_designations, '^[A-Z][A-Z0-9_]{1,63}$')),
    loan_date_from date NOT NULL,
    loan_date_to date,
    one_bank_per_enterprise boolean NOT NULL DEFAULT true,
    reserved_minor bigint NOT NULL DEFAULT 0,
    confirmed_minor bigint NOT NULL DEFAULT 0,
    lender_quota_sum_minor bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT programs_loan_date_window_check CHECK (loan_date_to >= loan_date_from),
    -- The quota is never overdrawn: allocation does a conditional UPDATE and this is the backstop.
    CONSTRAINT programs_quota_check CHECK (
        reserved_minor >= 0 AND confirmed_minor >= 0
        AND reserved_minor + confirmed_minor <= total_quota_minor),
    CONSTRAINT programs_lender_quota_sum_check CHECK (
        lender_quota_sum_minor >= 0 AND lender_quota_sum_minor <= total_quota_minor)
);
CREATE TRIGGER programs_touch_updated_at BEFORE UPDATE ON programs
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();

COMMENT ON TABLE programs IS 'Special-loan programs: a quota of preferential loans with eligibility and pricing rules (e.g. the 2020 PBoC special re-lending).';
COMMENT ON COLUMN programs.code IS 'Short unique code of the program, e.g. PBOC_2020_RELENDING.';
COMMENT ON COLUMN programs.total_quota_minor IS 'Total amount that may be allocated (reserved + confirmed), minor units.';
COMMENT ON COLUMN programs.rate_cap_bps IS 'Highest loan rate allowed, e.g. 315 (1-year LPR 415 minus 100 bp).';
COMMENT ON COLUMN programs.subsidy_ratio_bps IS 'Share of interest paid by the treasury, 0..10000 (5000 = 50%).';
COMMENT ON COLUMN programs.max_effective_rate_bps IS 'Cap on the enterprise''s cost after subsidy, rate x (1 - subsidy ratio); NULL = no cap.';
COMMENT ON COLUMN programs.per_enterprise_cap_minor IS 'Cap on one enterprise''s live (reserved + confirmed) allocations; NULL = no cap.';
COMMENT ON COLUMN programs.max_term_months IS 'Longest loan term allowed.';
COMMENT ON COLUMN programs.required_designations IS 'List codes of which the enterprise must hold any one valid on the loan date; empty = no requirement.';
COMMENT ON COLUMN programs.loan_date_from IS 'First eligible loan date (inclusive).';
COMMENT ON COLUMN programs.loan_date_to IS 'Last eligible loan date (inclusive); NULL = open-ended.';
COMMENT ON COLUMN programs.one_bank_per_enterprise IS 'All of an enterprise''s allocations in the program go through one lender (program_enterprises.lender_id).';
COMMENT ON COLUMN programs.reserved_minor IS 'Sum of RESERVED allocations; maintained in the allocation transaction.';
COMMENT ON COLUMN programs.confirmed_minor IS 'Sum of CONFIRMED allocations; maintained in the allocation transaction.';
COMMENT ON COLUMN programs.lender_quota_sum_minor IS 'Sum of program_lender_quotas.quota_minor; maintained by SetLenderQuota so lender quotas never exceed the total.';

CREATE TABLE program_lender_quotas (
    program_id uuid NOT NULL REFERENCES programs (id),
    lender_id uuid NOT NULL REFERENCES lenders (id),
    quota_minor bigint NOT NULL CHECK (quota_minor >= 0),
    reserved_minor bigint NOT NULL DEFAULT 0,
    confirmed_minor bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, lender_id),
    CONSTRAINT program_lender_quotas_balance_check CHECK (
        reserved_minor >= 0 AND confirmed_minor >= 0
        AND reserved_minor + confirmed_minor <= quota_minor)
);
CREATE INDEX program_lender_quotas_lender_id_idx ON program_lender_quotas (lender_id);

COMMENT ON TABLE program_lender_quotas IS 'Per-lender share of a program''s quota (the designated banks) and its live balance. A lender without a row has no quota.';
COMMENT ON COLUMN program_lender_quotas.quota_minor IS 'Lender''s quota; never below reserved_minor + confirmed_minor.';
COMMENT ON COLUMN program_lender_quotas.reserved_minor IS 'Sum of the lender''s RESERVED allocations in the program.';
COMMENT ON COLUMN program_lender_quotas.confirmed_minor IS 'Sum of the lender''s CONFIRMED allocations in the program.';

CREATE TABLE program_enterprises (
    program_id uuid NOT NULL REFERENCES programs (id),
    enterprise_id uuid NOT NULL REFERENCES enterprises (id),
    lender_id uuid NOT NULL REFERENCES lenders (id),
    live_minor bigint NOT NULL DEFAULT 0 CHECK (live_minor >= 0),
    PRIMARY KEY (program_id, enterprise_id),
    CONSTRAINT program_enterprises_quota_fkey FOREIGN KEY (program_id, lender_id)
        REFERENCES program_lender_quotas (program_id, lender_id)
);
CREATE INDEX program_enterprises_enterprise_id_idx ON program_enterprises (enterprise_id);
CREATE INDEX program_enterprises_lender_id_idx ON program_enterprises (lender_id);

COMMENT ON TABLE program_enterprises IS 'An enterprise''s standing in a program, locked and updated in the allocation transaction: its bank binding (the one-bank rule) and its live amount (the per-enterprise cap).';
COMMENT ON COLUMN program_enterprises.lender_id IS 'The lender the enterprise is bound to (its first allocation''s lender); enforced for later allocations when programs.one_bank_per_enterprise.';
COMMENT ON COLUMN program_enterprises.live_minor IS 'Sum of the enterprise''s RESERVED and CONFIRMED allocations in the program.';

CREATE TABLE allocations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    program_id uuid NOT NULL REFERENCES programs (id),
    lender_id uuid NOT NULL REFERENCES lenders (id),
    enterprise_id uuid NOT NULL REFERENCES enterprises (id),
    referral_id uuid REFERENCES referrals (id),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    rate_bps integer NOT NULL CHECK (rate_bps >= 0),
    term_months integer NOT NULL CHECK (term_months > 0),
    loan_date date NOT NULL,
    status text NOT NULL DEFAULT 'RESERVED' CHECK (status IN ('RESERVED', 'CONFIRMED', 'RELEASED')),
    subsidy_minor bigint NOT NULL DEFAULT 0 CHECK (subsidy_minor >= 0),
    effective_rate_bps integer NOT NULL CHECK (effective_rate_bps >= 0),
    designation_id uuid REFERENCES designations (id),
    designation_list_code text CHECK (designation_list_code ~ '^[A-Z][A-Z0-9_]{1,63}$'),
    loan_reference text CHECK (btrim(loan_reference) <> ''),
    disbursed_on date,
    idempotency_key text CHECK (idempotency_key <> ''),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Allocations draw on the lender's quota row in the program.
    CONSTRAINT allocations_quota_fkey FOREIGN KEY (program_id, lender_id)
        REFERENCES program_lender_quotas (program_id, lender_id),
    -- The designation relied on belongs to this enterprise and has the recorded list code.
    CONSTRAINT allocations_designation_fkey FOREIGN KEY (designation_id, enterprise_id, designation_list_code)
        REFERENCES designations (id, enterprise_id, list_code),
    CONSTRAINT allocations_designation_pair_check CHECK ((designation_id IS NULL) = (designation_list_code IS NULL)),
    CONSTRAINT allocations_effective_rate_check CHECK (effective_rate_bps <= rate_bps),
    CONSTRAINT allocations_confirmed_reference_check CHECK (status <> 'CONFIRMED' OR loan_reference IS NOT NULL),
    CONSTRAINT allocations_reference_date_pair_check CHECK ((loan_reference IS NULL) = (disbursed_on IS NULL)),
    -- NULLs are distinct, so this binds only confirmed loans; a plain UNIQUE
    -- (not a partial index) so ON CONFLICT (lender_id, loan_reference) can use it.
    CONSTRAINT allocations_lender_id_loan_reference_key UNIQUE (lender_id, loan_reference)
);
CREATE INDEX allocations_program_id_status_idx ON allocations (program_id, status, created_at, id);
CREATE INDEX allocations_program_id_created_at_idx ON allocations (program_id, created_at, id);
CREATE INDEX allocations_lender_id_created_at_idx ON allocations (lender_id, created_at, id);
CREATE INDEX allocations_enterprise_id_created_at_idx ON allocations (enterprise_id, created_at, id);
CREATE INDEX allocations_referral_id_idx ON allocations (referral_id) WHERE referral_id IS NOT NULL;
CREATE TRIGGER allocations_touch_updated_at BEFORE UPDATE ON allocations
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();

COMMENT ON TABLE allocations IS 'Special-loan quota allocations. Status: RESERVED -> CONFIRMED (loan disbursed) or RELEASED (quota returns).';
COMMENT ON COLUMN allocations.referral_id IS 'Referral the loan came through, when there is one.';
COMMENT ON COLUMN allocations.rate_bps IS 'Loan rate; at most programs.rate_cap_bps.';
COMMENT ON COLUMN allocations.loan_date IS 'Loan date; inside the program''s window, and the designation must be valid on it.';
COMMENT ON COLUMN allocations.status IS 'RESERVED, CONFIRMED or RELEASED.';
COMMENT ON COLUMN allocations.subsidy_minor IS 'Estimated interest subsidy: amount x rate x subsidy ratio x term_months / 12, integer arithmetic, rounded half-up to the minor unit.';
COMMENT ON COLUMN allocations.effective_rate_bps IS 'Enterprise''s cost after subsidy, rate x (1 - subsidy ratio), rounded half-up.';
COMMENT ON COLUMN allocations.designation_id IS 'The designation the eligibility decision relied on; NULL when the program requires none.';
COMMENT ON COLUMN allocations.designation_list_code IS 'List code of designation_id, kept for reporting and explanation.';
COMMENT ON COLUMN allocations.loan_reference IS 'Lender''s loan reference, set on confirmation; unique per lender.';
COMMENT ON COLUMN allocations.disbursed_on IS 'Disbursement date, set on confirmation together with loan_reference.';
COMMENT ON COLUMN allocations.idempotency_key IS 'Client idempotency key of the AllocateSpecialLoan call that created it (the replay record is in idempotency_keys).';

------------------------------------------------------------------------------
-- Idempotency and audit
------------------------------------------------------------------------------

CREATE TABLE idempotency_keys (
    principal_id uuid NOT NULL,
    rpc text NOT NULL CHECK (rpc <> ''),
    key text NOT NULL CHECK (key <> ''),
    request_hash bytea NOT NULL,
    response bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, rpc, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

COMMENT ON TABLE idempotency_keys IS 'Replay records of mutating RPCs called with an idempotency key, written in the same transaction as the effect: same key and same request -> the stored response; same key and a different request -> IDEMPOTENCY_KEY_REUSED.';
COMMENT ON COLUMN idempotency_keys.principal_id IS 'Credential that made the call; keys are scoped per caller.';
COMMENT ON COLUMN idempotency_keys.rpc IS 'Full RPC name, e.g. finmatch.v1.FinancingService/SubmitNeed.';
COMMENT ON COLUMN idempotency_keys.key IS 'Client-chosen idempotency key.';
COMMENT ON COLUMN idempotency_keys.request_hash IS 'Digest of the canonical request, to detect a key reused with a different request.';
COMMENT ON COLUMN idempotency_keys.response IS 'Encoded first response, returned on replay; NULL while the claiming transaction has not stored it yet.';

CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    principal_id uuid,
    principal_role text NOT NULL CHECK (principal_role IN ('OPERATOR', 'PORTAL', 'LENDER', 'SYSTEM')),
    lender_id uuid,
    rpc text NOT NULL CHECK (rpc <> ''),
    entity_type text NOT NULL,
    entity_id text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_created_at_idx ON audit_log (created_at);
CREATE INDEX audit_log_entity_idx ON audit_log (entity_type, entity_id);
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION finmatch_forbid_change();

COMMENT ON TABLE audit_log IS 'Append-only record of every mutating call (who, which RPC, which entity, when), written in the call''s own transaction.';
COMMENT ON COLUMN audit_log.principal_id IS 'Credential that made the call; NULL for actions without one (CLI bootstrap, background sweeper).';
COMMENT ON COLUMN audit_log.principal_role IS 'OPERATOR, PORTAL, LENDER, or SYSTEM for the CLI and background tasks.';
COMMENT ON COLUMN audit_log.lender_id IS 'Lender the principal acts as (LENDER credentials); NULL otherwise.';
COMMENT ON COLUMN audit_log.rpc IS 'RPC (e.g. finmatch.v1.LenderService/CreateProduct) or CLI/background action name.';
COMMENT ON COLUMN audit_log.entity_type IS 'Kind of entity changed, e.g. need, referral, allocation.';
COMMENT ON COLUMN audit_log.entity_id IS 'Id of the entity changed, as text.';
COMMENT ON COLUMN audit_log.detail IS 'Call-specific data needed to understand the change; never tokens.';

------------------------------------------------------------------------------
-- Product cache invalidation
------------------------------------------------------------------------------

-- Replicas keep an in-memory product cache for matching; any change to
-- products or lenders tells them to reload it (delivered at commit).
CREATE FUNCTION finmatch_notify_products_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('finmatch_products_changed', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION finmatch_notify_products_changed() IS
    'AFTER statement trigger on products and lenders: NOTIFY finmatch_products_changed with the table name as payload.';
CREATE TRIGGER products_notify_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION finmatch_notify_products_changed();
CREATE TRIGGER lenders_notify_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON lenders
    FOR EACH STATEMENT EXECUTE FUNCTION finmatch_notify_products_changed();
