// The bureau's morning view: GetSummary's totals, the funnel, the breakdowns, and each
// special-loan programme's quota by bank (GetProgram, operators only).

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Role } from "../gen/finmatch/v1/common_pb";
import { GetSummaryRequestSchema, type GetSummaryResponse } from "../gen/finmatch/v1/reporting_service_pb";
import { reporting, session, specialLoans } from "../api";
import { field, h, replace } from "../dom";
import { count, duration, money, moneyShort, rate, time } from "../format";
import { t } from "../i18n";
import { labelled, loading, showProblem, table } from "../ui";
import { chart, wan } from "./charts";

export async function dashboard(main: HTMLElement, _arg: string, signal: AbortSignal): Promise<void> {
  const body = h("div", { id: "dashboard-body" }, loading());
  const errors = h("div");
  const form = h("form", { class: "card filters", id: "summary-filters" },
    labelled(t("periodFrom"), h("input", { type: "date", name: "from" }), "period_from"),
    labelled(t("periodTo"), h("input", { type: "date", name: "to" }), "period_to"),
    labelled(t("regionPrefix"), h("input", { name: "region", inputmode: "numeric", maxlength: 6, size: 8 }), "region_prefix"),
    labelled(t("industryPrefix"), h("input", { name: "industry", maxlength: 5, size: 8 }), "industry_prefix"),
    h("button", { type: "submit" }, t("apply")),
    h("button", { type: "reset", class: "secondary" }, t("reset")));
  replace(main, h("h1", {}, t("navDashboard")), form, errors, body);

  const show = async () => {
    const request = create(GetSummaryRequestSchema, {
      regionPrefix: field(form, "region"),
      industryPrefix: field(form, "industry"),
    });
    const from = field(form, "from");
    const to = field(form, "to");
    // The period's days in the browser's time zone: from the first day's start to the last's end.
    if (from) request.periodFrom = timestampFromDate(new Date(`${from}T00:00:00`));
    if (to) request.periodTo = timestampFromDate(new Date(new Date(`${to}T00:00:00`).getTime() + 86_400_000));
    try {
      const summary = await reporting.getSummary(request);
      replace(errors);
      replace(body, ...(await render(summary, signal)));
    } catch (err) {
      showProblem(errors, err, form);
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void show();
  });
  form.addEventListener("reset", () => setTimeout(() => void show()));
  await show();
}

function figure(name: string, label: string, value: string, raw: bigint | number | string): HTMLElement {
  return h("div", { class: "figure", "data-figure": name, "data-value": String(raw) },
    h("div", { class: "figure-value" }, value), h("div", { class: "figure-label" }, label));
}

async function render(s: GetSummaryResponse, signal: AbortSignal): Promise<HTMLElement[]> {
  const figures = h("section", { class: "figures", "aria-label": t("navDashboard") },
    figure("enterprises", t("enterprises"), count(s.enterprises), s.enterprises),
    figure("needs", t("needs"), count(s.needs), s.needs),
    figure("demand", t("demand"), moneyShort(s.demandMinor), s.demandMinor),
    figure("routed", t("routed"), count(s.routedNeeds), s.routedNeeds),
    figure("approved", t("approved"), count(s.approvedNeeds), s.approvedNeeds),
    figure("approved-amount", t("approvedAmount"), moneyShort(s.approvedMinor), s.approvedMinor),
    figure("funded", t("funded"), count(s.fundedNeeds), s.fundedNeeds),
    figure("disbursed", t("disbursed"), moneyShort(s.disbursedMinor), s.disbursedMinor),
    figure("funding-rate", t("fundingRate"), rate(s.fundingRateBps), s.fundingRateBps),
    figure("median-response", t("medianResponse"), duration(s.medianTimeToFirstAnswer?.seconds),
      s.medianTimeToFirstAnswer?.seconds ?? ""));

  const funnel = chart(t("funnel"), {
    tooltip: { trigger: "item" },
    series: [{
      type: "funnel", sort: "descending", left: "8%", width: "66%",
      label: { formatter: "{b}: {c}" },
      data: [
        { name: t("needs"), value: Number(s.needs) },
        { name: t("routed"), value: Number(s.routedNeeds) },
        { name: t("approved"), value: Number(s.approvedNeeds) },
        { name: t("funded"), value: Number(s.fundedNeeds) },
      ],
    }],
  }, "funnel", signal);

  const banks = s.byLender;
  const byBank = chart(t("byBank"), {
    tooltip: { trigger: "axis" },
    legend: { bottom: 0 },
    grid: { left: 150, right: 30, bottom: 56 },
    yAxis: { type: "category", data: banks.map((b) => b.lenderName), inverse: true },
    xAxis: { type: "value" },
    series: [
      { name: t("referrals"), type: "bar", data: banks.map((b) => Number(b.referrals)) },
      { name: t("approvals"), type: "bar", data: banks.map((b) => Number(b.approvals)) },
      { name: t("declines"), type: "bar", data: banks.map((b) => Number(b.declines)) },
    ],
  }, "bank", signal);

  const demandBars = (id: string, title: string, rows: { key: string; demand: bigint; disbursed: bigint }[]) =>
    chart(title, {
      tooltip: { trigger: "axis", valueFormatter: (v: unknown) => `${v} 万` },
      legend: { bottom: 0 },
      grid: { left: 70, right: 20, bottom: 56 },
      xAxis: { type: "category", data: rows.map((r) => r.key) },
      yAxis: { type: "value", name: "万元" },
      series: [
        { name: t("demand"), type: "bar", data: rows.map((r) => wan(r.demand)) },
        { name: t("disbursed"), type: "bar", data: rows.map((r) => wan(r.disbursed)) },
      ],
    }, id, signal);
  const byIndustry = demandBars("industry", t("byIndustry"),
    s.byIndustry.map((i) => ({ key: i.industryPrefix, demand: i.demandMinor, disbursed: i.disbursedMinor })));
  const byRegion = demandBars("region", t("byRegion"),
    s.byRegion.map((r) => ({ key: r.regionPrefix, demand: r.demandMinor, disbursed: r.disbursedMinor })));

  const programs = s.byProgram.map((p) => h("section", { class: "card program", "data-program": p.code },
    h("h2", {}, `${t("byProgram")} · ${p.name}`),
    h("div", { class: "figures" },
      figure(`program-${p.code}-enterprises`, t("programEnterprises"), count(p.enterprises), p.enterprises),
      figure(`program-${p.code}-allocated`, t("programAllocated"), moneyShort(p.allocatedMinor), p.allocatedMinor),
      figure(`program-${p.code}-confirmed`, t("quotaUsed"), moneyShort(p.confirmedMinor), p.confirmedMinor),
      figure(`program-${p.code}-remaining`, t("quotaRemaining"), moneyShort(p.remainingMinor), p.remainingMinor),
      figure(`program-${p.code}-quota`, t("programQuota"), moneyShort(p.totalQuotaMinor), p.totalQuotaMinor))));

  const quotas = session.role === Role.OPERATOR
    ? await Promise.all(s.byProgram.map((p) => quotaByBank(p.programId, p.name, s, signal)))
    : s.byProgram.length > 0 ? [h("p", { class: "muted" }, t("quotaOperatorOnly"))] : [];

  const bankTable = table(
    [t("bank"), t("referrals"), t("approvals"), t("declines"), t("approvedAmount"), t("disbursed"), t("medianResponse")],
    banks.map((b) => [b.lenderName, count(b.referrals), count(b.approvals), count(b.declines),
      money(b.approvedMinor), money(b.disbursedMinor), duration(b.medianResponseTime?.seconds)]),
    { id: "bank-table" });

  return [
    figures,
    h("p", { class: "muted" }, `${t("asOf")} ${time(s.asOf)}`),
    h("div", { class: "grid2" }, funnel, byBank),
    h("div", { class: "grid2" }, byIndustry, byRegion),
    ...programs,
    ...quotas,
    h("section", { class: "card" }, h("h2", {}, t("byBank")), bankTable),
  ];
}

async function quotaByBank(programId: string, name: string, s: GetSummaryResponse, signal: AbortSignal): Promise<HTMLElement> {
  const { program } = await specialLoans.getProgram({ programId });
  const names = new Map(s.byLender.map((b) => [b.lenderId, b.lenderName]));
  const rows = (program?.balance?.lenders ?? []).filter((l) => l.quotaMinor > 0n);
  const label = (id: string) => names.get(id) ?? id.slice(0, 8);
  const panel = chart(`${t("quotaByBank")} · ${name}`, {
    tooltip: { trigger: "axis", valueFormatter: (v: unknown) => `${v} 万` },
    legend: { bottom: 0 },
    grid: { left: 150, right: 30, bottom: 56 },
    yAxis: { type: "category", data: rows.map((l) => label(l.lenderId)), inverse: true },
    xAxis: { type: "value", name: "万元" },
    series: [
      { name: t("quotaUsed"), type: "bar", stack: "q", data: rows.map((l) => wan(l.confirmedMinor)) },
      { name: t("quotaReserved"), type: "bar", stack: "q", data: rows.map((l) => wan(l.reservedMinor)) },
      { name: t("quotaRemaining"), type: "bar", stack: "q", data: rows.map((l) => wan(l.remainingMinor)) },
    ],
  }, `quota-${programId}`, signal);
  panel.append(table([t("bank"), t("programQuota"), t("quotaUsed"), t("quotaReserved"), t("quotaRemaining")],
    rows.map((l) => [label(l.lenderId), money(l.quotaMinor), money(l.confirmedMinor), money(l.reservedMinor), money(l.remainingMinor)]),
    { class: "quota-table" }));
  return panel;
}
