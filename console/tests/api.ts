// The tests' own way to the API, beside the browser's: the same generated clients over gRPC-Web
// from Node, so what the console shows is checked against what the API answers.

import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { FinancingService } from "../src/gen/finmatch/v1/financing_service_pb";
import { LenderService } from "../src/gen/finmatch/v1/lender_service_pb";
import { PartnerService } from "../src/gen/finmatch/v1/partner_service_pb";
import { ReportingService } from "../src/gen/finmatch/v1/reporting_service_pb";
import { EnterpriseService } from "../src/gen/finmatch/v1/enterprise_service_pb";
import { SpecialLoanService } from "../src/gen/finmatch/v1/special_loan_service_pb";

export const baseUrl = process.env.FINMATCH_URL ?? "http://127.0.0.1:50051";

export function api(token: string) {
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [bearer] });
  return {
    enterprises: createClient(EnterpriseService, transport),
    financing: createClient(FinancingService, transport),
    lenders: createClient(LenderService, transport),
    partner: createClient(PartnerService, transport),
    reporting: createClient(ReportingService, transport),
    specialLoans: createClient(SpecialLoanService, transport),
  };
}

/** An environment variable the CI script exports from `finmatch dev`'s banner. */
export function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through .ci/console`);
  return value;
}

/** The bank tokens the banner printed (`BANK_ICBC=...`), by their short name. */
export function bankTokens(): Map<string, string> {
  return new Map(Object.entries(process.env)
    .filter(([name, value]) => name.startsWith("BANK_") && value)
    .map(([name, value]) => [name.slice(5), value!]));
}
