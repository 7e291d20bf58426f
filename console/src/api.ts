// The console's only way to finmatch: the public API over gRPC-Web, on the origin that served
// the page, with clients generated from proto/ (protobuf-es + Connect-Web).

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { EnterpriseService } from "./gen/finmatch/v1/enterprise_service_pb";
import { FinancingService } from "./gen/finmatch/v1/financing_service_pb";
import { LenderService } from "./gen/finmatch/v1/lender_service_pb";
import { PartnerService } from "./gen/finmatch/v1/partner_service_pb";
import { ReportingService } from "./gen/finmatch/v1/reporting_service_pb";
import { SpecialLoanService } from "./gen/finmatch/v1/special_loan_service_pb";
import { Role } from "./gen/finmatch/v1/common_pb";

const TOKEN_KEY = "finmatch.token";
const ROLE_KEY = "finmatch.role";

/** The signed-in caller: the token (sessionStorage only, never the URL) and the role it has. */
export const session = {
  token: sessionStorage.getItem(TOKEN_KEY) ?? "",
  role: Number(sessionStorage.getItem(ROLE_KEY) ?? Role.UNSPECIFIED) as Role,
  save(token: string, role: Role): void {
    this.token = token;
    this.role = role;
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(ROLE_KEY, String(role));
  },
  clear(): void {
    this.token = "";
    this.role = Role.UNSPECIFIED;
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ROLE_KEY);
  },
};

/** Called when any call answers UNAUTHENTICATED: the token was revoked or expired meanwhile. */
let onUnauthenticated: (problem: Problem) => void = () => {};
export function whenUnauthenticated(handler: (problem: Problem) => void): void {
  onUnauthenticated = handler;
}

const bearer: Interceptor = (next) => async (req) => {
  if (session.token) req.header.set("authorization", `Bearer ${session.token}`);
  try {
    return await next(req);
  } catch (err) {
    const p = problem(err);
    if (p.code === Code.Unauthenticated && session.token) onUnauthenticated(p);
    throw err;
  }
};

const transport = createGrpcWebTransport({
  baseUrl: globalThis.location?.origin ?? "",
  interceptors: [bearer],
});

export const enterprises = createClient(EnterpriseService, transport);
export const financing = createClient(FinancingService, transport);
export const lenders = createClient(LenderService, transport);
export const partner = createClient(PartnerService, transport);
export const reporting = createClient(ReportingService, transport);
export const specialLoans = createClient(SpecialLoanService, transport);

export interface Violation {
  field: string;
  description: string;
}

/** What went wrong, as the API said it: the code, its message and the field-level details. */
export interface Problem {
  code: Code;
  message: string;
  violations: Violation[];
  /** google.rpc.ErrorInfo.reason, e.g. IDEMPOTENCY_KEY_REUSED. */
  reason: string;
}

export function problem(err: unknown): Problem {
  const e = ConnectError.from(err);
  const p: Problem = { code: e.code, message: e.rawMessage, violations: [], reason: "" };
  for (const detail of e.details) {
    // Details arrive as google.rpc.Status details (Any); these two are all the console reads.
    if (!("type" in detail) || !(detail.value instanceof Uint8Array)) continue;
    if (detail.type === "google.rpc.BadRequest") p.violations.push(...badRequest(detail.value));
    if (detail.type === "google.rpc.ErrorInfo") p.reason = errorInfoReason(detail.value);
  }
  return p;
}

// google.rpc.BadRequest { repeated FieldViolation field_violations = 1; }
// FieldViolation { string field = 1; string description = 2; ... }
function badRequest(bytes: Uint8Array): Violation[] {
  const out: Violation[] = [];
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (fieldNo !== 1) {
      reader.skip(wireType);
      continue;
    }
    const inner = new BinaryReader(reader.bytes());
    const v: Violation = { field: "", description: "" };
    while (inner.pos < inner.len) {
      const [no, wt] = inner.tag();
      if (no === 1) v.field = inner.string();
      else if (no === 2) v.description = inner.string();
      else inner.skip(wt);
    }
    out.push(v);
  }
  return out;
}

// google.rpc.ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
function errorInfoReason(bytes: Uint8Array): string {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wt] = reader.tag();
    if (no === 1) return reader.string();
    reader.skip(wt);
  }
  return "";
}

/**
 * The role a token has, found by asking what it may do (the API has no "who am I" call):
 * GetSummary admits the bureau, ListLenders operators only, ListReferrals lenders only.
 */
export async function probeRole(): Promise<Role> {
  try {
    await reporting.getSummary({});
  } catch (err) {
    const p = problem(err);
    if (p.code !== Code.PermissionDenied) throw err;
    await partner.listReferrals({ pageSize: 1 });
    return Role.LENDER;
  }
  try {
    await lenders.listLenders({ pageSize: 1 });
    return Role.OPERATOR;
  } catch (err) {
    if (problem(err).code !== Code.PermissionDenied) throw err;
    return Role.PORTAL;
  }
}

export { Code };
